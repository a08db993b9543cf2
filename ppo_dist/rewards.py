"""Reward functions and their loading.

A reward function is called as ``fn(prompts, completions, **columns) -> list[float]`` on the
decoded texts of one process's shard; ``columns`` carries the other dataset columns of each sample.
``build_reward(cfg)`` turns ``reward.functions`` / ``reward.weights`` into a ``Reward`` whose call
returns every component and their weighted sum, validated (finite, one float per sample).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

RewardFn = Callable[..., Sequence[float]]


class RewardError(RuntimeError):
    """A reward function failed or returned something unusable; the message names it."""


POSITIVE_WORDS = ("好", "棒", "喜欢", "开心", "快乐", "有趣", "学习", "成长")


def _repeats_too_much(text: str, n: int = 2) -> bool:
    """True when fewer than half of the character n-grams (whitespace removed) are distinct.

    The legacy rule split on whitespace, which never fires on Chinese (no spaces). Character
    bigrams catch "好好好好好" and "开心开心开心" alike, and leave normal sentences alone.
    """
    chars = "".join(text.split())
    grams = [chars[i : i + n] for i in range(len(chars) - n + 1)]
    return len(grams) >= 4 and len(set(grams)) < 0.5 * len(grams)


def chinese_rule(prompts: Sequence[str], completions: Sequence[str], **_: object) -> list[float]:
    """The seed notebook's rule reward on the completion text.

    0.1 base; +0.5 when 10 <= characters (whitespace stripped) <= 50; +0.3 for each word of
    ``POSITIVE_WORDS`` that occurs at least once; -0.2 when fewer than half of the character
    bigrams are distinct (repetition). Range [-0.1, 3.0].
    """
    rewards = []
    for text in completions:
        text = text.strip()
        r = 0.1
        if 10 <= len(text) <= 50:
            r += 0.5
        r += 0.3 * sum(word in text for word in POSITIVE_WORDS)
        if _repeats_too_much(text):
            r -= 0.2
        rewards.append(r)
    return rewards


BUILTIN_REWARDS: dict[str, RewardFn] = {"chinese_rule": chinese_rule}


def load_reward_fn(spec: str) -> RewardFn:
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    raise RewardError(f"unknown reward function {spec!r}; built-in: {', '.join(BUILTIN_REWARDS)}")


@dataclass
class Reward:
    """Weighted sum of named reward functions, with every component kept for logging."""

    names: list[str]
    fns: list[RewardFn]
    weights: list[float]

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns: Sequence) -> dict[str, torch.Tensor]:
        """Returns ``{name: (B,) float tensor per component, "score": (B,) weighted sum}``."""
        out: dict[str, torch.Tensor] = {}
        total = torch.zeros(len(completions), dtype=torch.float32)
        for name, fn, w in zip(self.names, self.fns, self.weights):
            try:
                values = fn(list(prompts), list(completions), **columns)
            except Exception as e:  # noqa: BLE001 - re-raised with the function's name
                raise RewardError(f"reward function {name!r} raised {type(e).__name__}: {e}") from e
            values = validate_rewards(name, values, completions)
            out[name] = values
            total += w * values
        out["score"] = total
        return out


def validate_rewards(name: str, values: object, completions: Sequence[str]) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        values = values.detach().float().flatten().tolist()
    if not isinstance(values, (list, tuple)):
        raise RewardError(f"reward function {name!r} returned {type(values).__name__}, expected a list of floats")
    if len(values) != len(completions):
        raise RewardError(f"reward function {name!r} returned {len(values)} values for {len(completions)} completions")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise RewardError(
                f"reward function {name!r} returned {v!r} for sample {i} (completion {completions[i][:80]!r}); expected a finite float"
            )
    return torch.tensor(values, dtype=torch.float32)


def build_reward(functions: Sequence[str], weights: Sequence[float] | None = None) -> Reward:
    names = [str(f) for f in functions]
    return Reward(names, [load_reward_fn(n) for n in names], [float(w) for w in (weights or [1.0] * len(names))])
