"""Run guards that own their policy: numerics (bad steps in a row), KL / entropy drift, stop signals.

Each guard sees the global statistics of a step (identical on every process), so every process
takes the same decision without another collective.
"""

from __future__ import annotations

import logging
import math
import signal
from pathlib import Path

from ..config import TrainConfig
from .checkpoint import complete_checkpoints

logger = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: checkpoint saved on a signal; the launcher should requeue
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class NumericsError(FloatingPointError):
    """``train.max_bad_steps`` consecutive PPO steps had skipped updates or non-finite statistics."""


class KLGuardError(RuntimeError):
    """The policy drifted past ``train.max_kl`` / below ``train.min_entropy`` with ``train.kl_guard: stop``."""


class Preempted(SystemExit):
    """A stop signal arrived; the checkpoint of ``step`` is saved. Exits with status 75."""

    def __init__(self, step: int):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step = step


def _last_checkpoint(root: Path) -> str:
    saved = complete_checkpoints(root)
    return str(saved[-1][1]) if saved else "none"


class NumericsGuard:
    """Counts bad steps (an optimiser update skipped, or non-finite statistics) in a row."""

    WATCHED = ("ppo/loss/total", "env/reward_mean")

    def __init__(self, cfg: TrainConfig, checkpoints_root: Path):
        self.limit, self.root = cfg.max_bad_steps, checkpoints_root
        self.in_a_row = 0

    def check(self, stats: dict, step: int, skipped_updates: int) -> bool:
        """True for a bad step (no periodic checkpoint of it); raises NumericsError at the limit."""
        nonfinite = [k for k in (*self.WATCHED, "objective/kl") if k in stats and not math.isfinite(stats[k])]
        if not skipped_updates and not nonfinite:
            self.in_a_row = 0
            return False
        self.in_a_row += 1
        what = ", ".join(
            [f"{skipped_updates} optimiser update(s) skipped (non-finite gradients)"] * bool(skipped_updates)
            + [f"non-finite {', '.join(nonfinite)}"] * bool(nonfinite)
        )
        if self.in_a_row >= self.limit:
            raise NumericsError(
                f"{self.in_a_row} bad PPO steps in a row (last: step {step}: {what}); lower optim.lr or check the "
                f"reward scale. Last checkpoint: {_last_checkpoint(self.root)} (periodic checkpoints skip bad steps)"
            )
        logger.warning(
            "bad PPO step %d (%d/%d in a row): %s; no periodic checkpoint", step, self.in_a_row, self.limit, what
        )
        return True


class KLGuard:
    """``train.max_kl`` / ``train.min_entropy``: warn, or stop before the step is checkpointed."""

    def __init__(self, cfg: TrainConfig, checkpoints_root: Path):
        self.cfg, self.root = cfg, checkpoints_root

    def check(self, stats: dict, step: int) -> None:
        t = self.cfg
        problems = []
        if t.max_kl is not None and stats["objective/kl"] > t.max_kl:
            problems.append(f"objective/kl={stats['objective/kl']:.3g} > train.max_kl={t.max_kl}")
        if t.min_entropy is not None and stats["objective/entropy"] < t.min_entropy:
            problems.append(f"objective/entropy={stats['objective/entropy']:.3g} < train.min_entropy={t.min_entropy}")
        if not problems:
            return
        message = (
            f"KL guard at step {step}: {'; '.join(problems)} (the policy is drifting from the reference or collapsing)"
        )
        if t.kl_guard == "stop":
            raise KLGuardError(
                f"{message}; stopped. Last checkpoint: {_last_checkpoint(self.root)}. "
                "Lower optim.lr or raise ppo.kl_coef"
            )
        logger.warning("%s; going on (train.kl_guard=warn)", message)


class StopSignals:
    """SIGUSR1 / SIGTERM / SIGINT: finish the current step, then checkpoint and exit 75."""

    def __init__(self):
        self.received: int | None = None

    def install(self) -> None:
        def handler(signum, frame):
            self.received = signum

        for sig in STOP_SIGNALS:
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        return self.received is not None
