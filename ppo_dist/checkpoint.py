"""Atomic, resumable checkpoints through ``accelerator.save_state`` / ``load_state``.

Layout: ``<output_dir>/checkpoints/step_<N>/``. A checkpoint is written into
``.tmp_step_<N>`` and renamed once every process has finished writing, so a kill mid-write leaves
the previous checkpoints untouched; a directory without the ``COMPLETE`` marker is never resumed
from. ``save_state`` covers the model(s), optimizer, scheduler, every process's RNG states and the
objects given to ``register_for_checkpointing`` (the trainer: global step, KL controller, reward
statistics). The data position is a function of the step (see ``data.PromptStream``).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from .distributed import any_process

logger = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    pass


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """``[(step, path), ...]`` of complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and (child / COMPLETE).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


class CheckpointManager:
    def __init__(self, accelerator, root: Path, keep: int, every: int = 0):
        self.accelerator, self.root, self.keep, self.every = accelerator, Path(root), keep, every

    def due(self, step: int, last: bool) -> bool:
        """A periodic checkpoint after ``step`` (``checkpoint.every``); the last step is saved by the
        trainer's end of run, not here."""
        return bool(self.every) and step % self.every == 0 and not last

    def save(self, step: int) -> Path:
        acc = self.accelerator
        final, tmp = self.root / f"step_{step}", self.root / f".tmp_step_{step}"
        if acc.is_main_process:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                if tmp.exists():
                    shutil.rmtree(tmp)
            except OSError as e:
                raise CheckpointError(f"cannot create checkpoint directory {tmp}: {e}") from e
        acc.wait_for_everyone()
        error = None
        try:
            acc.save_state(str(tmp))
        except Exception as e:  # noqa: BLE001 - disk full, permissions, quota (OSError, or a serializer's own error type)
            error = e
        if any_process(acc, error is not None):  # every process stops together, none waits in a barrier
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            previous = complete_checkpoints(self.root)
            intact = (
                f"the previous checkpoint {previous[-1][1]} is intact" if previous else "no earlier checkpoint exists"
            )
            raise CheckpointError(
                f"writing checkpoint step_{step} to {tmp} failed: {error or 'on another process'}; {intact}"
            )
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / COMPLETE).write_text(str(step))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            for _, old in complete_checkpoints(self.root)[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def resolve(self, resume: str | None) -> Path | None:
        if not resume:
            return None
        if resume == "auto":
            found = complete_checkpoints(self.root)
            return found[-1][1] if found else None
        path = Path(resume)
        if not (path / COMPLETE).is_file():
            raise CheckpointError(
                f"checkpoint.resume={resume!r} is not a complete checkpoint directory (no {COMPLETE} marker)"
            )
        return path

    def maybe_resume(self, resume: str | None) -> int | None:
        """Load the checkpoint named by ``checkpoint.resume``; returns its step or None."""
        path = self.resolve(resume)
        if path is None:
            if resume == "auto":
                logger.info("checkpoint.resume=auto: no checkpoint in %s, starting fresh", self.root)
            return None
        self.accelerator.load_state(str(path))
        return int((path / COMPLETE).read_text())
