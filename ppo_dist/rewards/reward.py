"""The reward of a step: a weighted sum of sources, every component kept (see the package doc)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from ..config import ON_INVALID, RewardConfig
from .builtin import RewardFn
from .errors import RewardError, RewardTimeoutError
from .model import RewardModelScorer
from .safety import call_with_timeout, validate_rewards
from .sources import RewardSource, load_reward_fn, unique_name

logger = logging.getLogger(__name__)


class Reward:
    """Weighted sum of reward sources, with every component kept for logging.

    ``reward(prompts, completions, **columns)`` -> ``{name: (B,) float32 per component, "score": (B,)
    float32 weighted sum}`` (+ ``"valid"``: ``(B,)`` bool with ``on_invalid="skip_sample"``), on
    ``self.device``. See the module doc for conventions, time limits and failure modes.
    """

    def __init__(
        self,
        sources: list[RewardSource],
        timeout: float = 60.0,
        on_invalid: str = "error",
        device: str | torch.device = "cpu",
    ):
        if on_invalid not in ON_INVALID:
            raise ValueError(f"on_invalid must be error or skip_sample, got {on_invalid!r}")
        self.sources, self.timeout, self.on_invalid = sources, timeout, on_invalid
        self.device = torch.device(device)

    def to(self, device: str | torch.device) -> Reward:
        """Where reward models run and where the returned tensors live."""
        self.device = torch.device(device)
        for scorer in self.model_scorers():
            scorer.to(self.device)
        return self

    def model_scorers(self) -> list[RewardModelScorer]:
        """The reward-model sources."""
        return [s.fn for s in self.sources if isinstance(s.fn, RewardModelScorer)]

    def _call_one(self, src: RewardSource, prompts: list[str], completions: list[str], columns: dict) -> Any:
        args = (list(completions),) if src.legacy else (list(prompts), list(completions))
        kwargs = {} if src.legacy else {k: v for k, v in columns.items() if src.columns is None or k in src.columns}
        if src.threaded:
            try:
                return call_with_timeout(src.name, src.fn, args, kwargs, self.timeout)
            except RewardTimeoutError:
                raise
            except Exception as e:
                raise RewardError(f"reward function {src.name!r} raised {type(e).__name__}: {e}") from e
        try:
            return src.fn(*args, **kwargs)
        except Exception as e:
            raise RewardError(f"reward function {src.name!r} raised {type(e).__name__}: {e}") from e

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], **columns: Sequence
    ) -> dict[str, torch.Tensor]:
        prompts, completions = list(prompts), list(completions)
        n = len(completions)
        if len(prompts) != n:
            raise RewardError(f"reward called with {len(prompts)} prompts for {n} completions")
        for key, col in columns.items():
            if not hasattr(col, "__len__") or len(col) != n:
                raise RewardError(
                    f"reward column {key!r} must have one entry per sample ({n}), got {type(col).__name__} of length "
                    f"{len(col) if hasattr(col, '__len__') else '?'}"
                )
        out: dict[str, torch.Tensor] = {}
        errors: list[RewardError] = []
        score = torch.zeros(n, dtype=torch.float64)
        valid = torch.ones(n, dtype=torch.bool)
        for src in self.sources:  # all sources run even after a failure (see the module doc)
            try:
                values, problems = validate_rewards(
                    src.name, self._call_one(src, prompts, completions, columns), completions
                )
            except RewardError as e:
                errors.append(e)
                continue
            if problems and self.on_invalid == "error":
                errors.append(
                    RewardError(
                        problems[0] + (f" ({len(problems)} of {n} samples invalid)" if len(problems) > 1 else "")
                    )
                )
            elif problems:
                logger.warning(
                    "%s; %d of %d samples marked invalid (reward.on_invalid=skip_sample)", problems[0], len(problems), n
                )
            valid &= ~values.isnan()
            score += src.weight * values
            out[src.name] = values.float()
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise RewardError("\n".join(map(str, errors))) from errors[0]
        out["score"] = score.float()
        if self.on_invalid == "skip_sample":
            out["valid"] = valid
        return {k: v.to(self.device) for k, v in out.items()}


def build_reward(
    cfg: RewardConfig | Sequence[str | RewardFn],
    weights: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
    **overrides: Any,
) -> Reward:
    """A ``Reward`` from ``cfg`` (a ``RewardConfig``), or from a plain list of specs/callables
    (+ ``weights`` and any other ``RewardConfig`` fields as keyword ``overrides``).

    Raises ``ConfigError`` for invalid reward fields, ``RewardSpecError`` (also a ``ConfigError``) for a spec
    that cannot be loaded.
    """
    if not isinstance(cfg, RewardConfig):
        cfg = RewardConfig(functions=list(cfg), weights=None if weights is None else list(weights), **overrides)
    elif weights is not None or overrides:
        raise TypeError("build_reward(RewardConfig) takes no weights/overrides; set them on the config")
    cfg.validate()  # ConfigError naming the field
    taken: set[str] = set()
    ws = cfg.weights if cfg.weights is not None else [1.0] * len(cfg.functions)
    sources = []
    for spec, w in zip(cfg.functions, ws, strict=True):
        name, fn = load_reward_fn(spec, cfg)
        sources.append(RewardSource.create(unique_name(name, taken), fn, float(w)))
    return Reward(sources, timeout=cfg.timeout, on_invalid=cfg.on_invalid).to(device)
