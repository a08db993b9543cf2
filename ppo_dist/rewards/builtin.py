"""Built-in reward functions; their parameters are ``reward.*`` fields."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..config import RewardConfig

RewardFn = Callable[..., Any]

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


def length(prompts: Sequence[str], completions: Sequence[str], *, target: int) -> list[float]:
    """``min(n, target) / target`` where n = characters of the completion after ``str.strip()``.

    Range [0, 1]: grows linearly with length, 1.0 from ``target`` characters on (``reward.length_target``).
    """
    return [min(len(text.strip()), target) / target for text in completions]


def contains_any(prompts: Sequence[str], completions: Sequence[str], *, words: Sequence[str]) -> list[float]:
    """1.0 when the completion contains at least one of ``words`` as a substring (case-sensitive), else 0.0.

    ``words`` is ``reward.words``.
    """
    return [1.0 if any(w in text for w in words) else 0.0 for text in completions]


def _bind(fn: Callable[..., list[float]], **params: Any) -> RewardFn:
    """``fn`` with its config parameters fixed; dataset columns are not passed to built-ins."""

    def bound(prompts: Sequence[str], completions: Sequence[str], **_columns: object) -> list[float]:
        return fn(prompts, completions, **params)

    bound.__name__ = fn.__name__
    bound.__doc__ = fn.__doc__
    return bound


# name -> factory(RewardConfig) -> reward function. Register new built-ins here.
BUILTIN_REWARDS: dict[str, Callable[[RewardConfig], RewardFn]] = {
    "chinese_rule": lambda cfg: chinese_rule,
    "length": lambda cfg: _bind(length, target=cfg.length_target),
    "contains_any": lambda cfg: _bind(contains_any, words=list(cfg.words)),
}
