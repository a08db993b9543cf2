"""Score post-processing on the global batch: EOS penalty, scale, running normalisation, clip."""

from __future__ import annotations

import math

import torch

from .. import algos
from ..config import RewardConfig


class RewardNormalizer:
    """Post-processing of the *global* (gathered over all processes) scores, in this order:

    1. EOS penalty: ``score += no_eos_penalty`` where ``finished`` is False (response never produced EOS);
       overlong:    ``score += algos.soft_overlong_penalty(length)`` with ``overlong_buffer`` (DAPO)
    2. scale:       ``score *= scale``
    3. normalise:   running stats updated with this batch's finite scores (Chan et al. parallel
                    merge, float64), then ``(score - mean) / max(std, std_floor)``; std is the
                    population std (divisor = count) of every score seen so far
    4. clip:        ``score.clamp(-clip, clip)``

    NaN scores (invalid samples under ``on_invalid=skip_sample``) stay NaN and do not enter the stats.
    Because it sees the gathered batch, the result does not depend on the number of processes.
    """

    def __init__(
        self,
        no_eos_penalty: float | None = None,
        scale: float = 1.0,
        normalize: bool = False,
        clip: float | None = None,
        std_floor: float = 1e-6,
        overlong: tuple[int, int, float] | None = None,
    ):
        self.no_eos_penalty, self.scale, self.normalize, self.clip, self.std_floor = (
            no_eos_penalty,
            scale,
            normalize,
            clip,
            std_floor,
        )
        self.overlong = overlong  # (max_len, buffer, penalty) of the soft overlong punishment, or None
        self.count, self.mean, self.m2 = 0, 0.0, 0.0  # python floats are float64

    @classmethod
    def from_config(cls, cfg: RewardConfig, max_new_tokens: int = 0) -> RewardNormalizer:
        overlong = (max_new_tokens, cfg.overlong_buffer, cfg.overlong_penalty) if cfg.overlong_buffer else None
        return cls(cfg.no_eos_penalty, cfg.scale, cfg.normalize, cfg.clip, overlong=overlong)

    @property
    def var(self) -> float:
        return self.m2 / self.count if self.count else 1.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def update(self, values: torch.Tensor) -> None:
        """Merge a batch into the running (count, mean, M2) -- Chan, Golub & LeVeque (1979), pairwise update."""
        x = values.detach().double().flatten()
        x = x[torch.isfinite(x)]
        n_b = x.numel()
        if n_b == 0:
            return
        mean_b = x.mean().item()
        m2_b = ((x - mean_b) ** 2).sum().item()
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta**2 * self.count * n_b / n
        self.count = n

    def __call__(
        self, scores: torch.Tensor, finished: torch.Tensor | None = None, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``scores``: ``(B,)`` global scores; ``finished``: ``(B,)`` bool, True where the response has EOS;
        ``lengths``: ``(B,)`` response tokens (for the overlong punishment)."""
        x = scores.detach().double()
        if self.no_eos_penalty is not None:
            if finished is None or finished.shape != scores.shape:
                raise ValueError(
                    f"reward.no_eos_penalty needs finished of shape {tuple(scores.shape)}, got "
                    f"{None if finished is None else tuple(finished.shape)}"
                )
            x = x + self.no_eos_penalty * (~finished.to(device=x.device, dtype=torch.bool)).double()
        if self.overlong is not None:
            if lengths is None or lengths.shape != scores.shape:
                raise ValueError(f"reward.overlong_buffer needs lengths of shape {tuple(scores.shape)}")
            x = x + algos.soft_overlong_penalty(lengths.to(x.device), *self.overlong).double()
        x = x * self.scale
        if self.normalize:
            self.update(x)
            x = (x - self.mean) / max(self.std, self.std_floor)
        if self.clip is not None:
            x = x.clamp(-self.clip, self.clip)
        return x.to(scores.dtype)

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        missing = {"count", "mean", "m2"} - set(state)
        if missing:
            raise KeyError(f"RewardNormalizer state is missing {sorted(missing)}")
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])
