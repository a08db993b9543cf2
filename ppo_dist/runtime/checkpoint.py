"""Atomic, verified, resumable checkpoints through ``accelerator.save_state`` / ``load_state``.

Layout: ``<output_dir>/checkpoints/step_<N>/``. A checkpoint is written into
``.tmp_step_<N>`` and renamed once every process has finished writing, so a kill mid-write leaves
the previous checkpoints untouched; a directory without the ``COMPLETE`` marker is never resumed
from. ``save_state`` covers the model(s), optimizer, scheduler, every process's RNG states and the
objects given to ``register_for_checkpointing`` (the trainer: global step, KL controller, reward
statistics). The data position is a function of the step (see ``data.prompts.PromptStream``).

Durability: once every process has written its files, one process per node fsyncs them; then the
main process records ``MANIFEST.json`` (size and CRC-32 of every file), fsyncs it and every
directory, writes ``COMPLETE`` (fsynced), renames the directory and fsyncs ``checkpoints/``. A crash
or power loss at any point leaves either no ``step_<N>`` or a complete one. Re-saving a step sets the
old ``step_<N>`` aside (``.old_step_<N>``) until the new one is renamed into place; a crash in between
leaves the old one, which resume puts back.

Verification on resume (main process; its choice is broadcast, so every process loads the same
checkpoint): ``checkpoint.resume auto`` checks the newest complete checkpoint against its manifest,
then the next older one while they are damaged (a file missing, truncated or overwritten after it was
written). Once an intact one is found, the damaged newer ones are renamed ``step_<N>.damaged`` (kept
for inspection, never resumed from or rotated) and one log line says so; when none is intact, nothing
is renamed and it is a ``CheckpointError`` (a requeued job must not start afresh). A damaged checkpoint
named explicitly (``checkpoint.resume PATH``) is a ``CheckpointError`` naming the file. Checkpoints
written before manifests existed load unverified, with a note in the log.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import time
import zlib
from pathlib import Path

from ..config import ConfigError
from .distributed import broadcast_object, failures_everywhere

logger = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
MANIFEST = "MANIFEST.json"
DAMAGED_SUFFIX = ".damaged"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or loaded; the message names it and what is intact."""


def check_writable(path: Path) -> None:
    """Fail before any model loads when ``train.output_dir`` cannot hold checkpoints."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"train.output_dir={str(path)!r} is not writable: {e.strerror or e}") from None


def complete_checkpoints(root: Path, pattern: re.Pattern = _STEP_DIR) -> list[tuple[int, Path]]:
    """``[(step, path), ...]`` of complete checkpoints under ``root`` (directories named by ``pattern``,
    whose group 1 is the step, holding the ``COMPLETE`` marker), oldest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = pattern.match(child.name)
        if m and (child / COMPLETE).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


# ---------------------------------------------------------------- manifest


def _crc32(path: Path) -> str:
    crc, buf = 0, bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            crc = zlib.crc32(view[:n], crc)
    return f"{crc:08x}"


def _checkpoint_files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and p.relative_to(directory).as_posix() not in (COMPLETE, MANIFEST)
    )


def write_manifest(directory: Path) -> dict:
    """Record the size and CRC-32 of every file under ``directory`` in ``MANIFEST.json`` (fsynced)."""
    files = {
        p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "crc32": _crc32(p)}
        for p in _checkpoint_files(directory)
    }
    manifest = {"format": 1, "files": files}
    with open(directory / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    return manifest


def find_damage(directory: Path) -> str | None:
    """``None`` when every file the manifest lists has its recorded size and CRC-32, else what does
    not match (``"model.safetensors has 1024 bytes, the manifest recorded 53912"``).

    Raises ``FileNotFoundError`` when the checkpoint has no manifest (written by an older version).
    """
    text = (directory / MANIFEST).read_text()
    try:
        files = json.loads(text)["files"]
        entries = [(name, int(e["size"]), str(e["crc32"])) for name, e in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{MANIFEST} is unreadable ({type(e).__name__}: {e})"
    for name, size, _ in entries:  # sizes first: cheap, and the usual damage
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{name} has {actual} bytes, the manifest recorded {size}"
    for name, _, crc in entries:
        actual = _crc32(directory / name)
        if actual != crc:
            return f"{name} does not match its checksum (CRC-32 {actual}, the manifest recorded {crc})"
    return None


# ---------------------------------------------------------------- fsync


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        # Some file systems cannot fsync a directory; a file's fsync error (EIO, ENOSPC) always counts.
        if not (path.is_dir() and e.errno in (errno.EINVAL, errno.ENOTSUP, errno.EBADF)):
            raise
    finally:
        os.close(fd)


def _fsync_tree(directory: Path, files: bool = True) -> None:
    """fsync every file (if ``files``) and every directory under ``directory``, deepest first, then itself."""
    entries = sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True)
    for p in entries:
        if p.is_dir() or (files and p.is_file()):
            _fsync(p)
    _fsync(directory)


def _set_aside(path: Path) -> Path:
    target, k = path.with_name(path.name + DAMAGED_SUFFIX), 1
    while target.exists():
        k += 1
        target = path.with_name(f"{path.name}{DAMAGED_SUFFIX}{k}")
    path.rename(target)
    return target


# ---------------------------------------------------------------- manager


# Fault injection for the crash-safety tests: PPO_DIST_FAULT_PAUSE=checkpoint_written:<step> makes the
# main process stop, with its files of step <step> written but the checkpoint not yet marked complete or
# renamed, and wait there (it writes <tmp>/.paused first) until it is killed.
FAULT_PAUSE_ENV = "PPO_DIST_FAULT_PAUSE"


def _fault_pause(point: str, step: int, where: Path) -> None:
    if os.environ.get(FAULT_PAUSE_ENV) != f"{point}:{step}" or not where.is_dir():
        return
    (where / ".paused").touch()
    while True:
        time.sleep(60)


def stop_together_on(
    accelerator, error: BaseException | None, what: str, partial: Path, root: Path, pattern: re.Pattern = _STEP_DIR
) -> None:
    """Every process agrees whether any failed ``what`` (writing ``partial``); if one did, the main process
    removes ``partial`` and every process raises the same one-line :class:`CheckpointError`, naming the
    newest complete checkpoint under ``root``, instead of the healthy ones waiting in the next collective."""
    failures = failures_everywhere(accelerator, error)
    if failures is None:
        return
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    previous = complete_checkpoints(root, pattern)
    intact = f"the previous checkpoint {previous[-1][1]} is intact" if previous else "no earlier checkpoint exists"
    reasons = "; ".join(dict.fromkeys(m for m in failures if m))  # the same error on every rank is said once
    raise CheckpointError(f"{what} failed: {reasons}; {intact}") from error


def recover_set_aside(root: Path) -> None:
    """A crash while re-saving ``step_<N>`` may leave the old one set aside as ``.old_step_<N>``: put it
    back when no new ``step_<N>`` took its place, drop it when one did."""
    for aside in sorted(Path(root).glob(".old_step_*")) if Path(root).is_dir() else []:
        final = aside.with_name(aside.name.removeprefix(".old_"))
        if final.exists():
            shutil.rmtree(aside, ignore_errors=True)
        elif (aside / COMPLETE).is_file():
            aside.rename(final)
            _fsync(aside.parent)
            logger.info("restored %s, set aside by a re-save that did not finish", final)


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
        _fault_pause("checkpoint_written", step, tmp)
        self._stop_together_on(error, step, tmp)
        # Every process has written its files. One process per node flushes them to disk (a network file
        # system flushes only the pages of the node that asks).
        if acc.is_local_main_process:
            try:
                _fsync_tree(tmp)
            except OSError as e:
                error = e
        self._stop_together_on(error, step, tmp)
        if acc.is_main_process:
            try:
                self._finalize(tmp, final, step)
            except OSError as e:
                error = e
        self._stop_together_on(error, step, tmp)
        if acc.is_main_process:
            for _, old in complete_checkpoints(self.root)[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def _finalize(self, tmp: Path, final: Path, step: int) -> None:
        """Main process, after every process wrote and fsynced its files: manifest, COMPLETE, rename."""
        write_manifest(tmp)
        _fsync_tree(tmp, files=False)  # the directory entries of every file
        with open(tmp / COMPLETE, "w") as f:
            f.write(str(step))
            f.flush()
            os.fsync(f.fileno())
        _fsync(tmp)
        if not final.exists():
            tmp.rename(final)
            _fsync(self.root)
            return
        # Re-saving a step (a rerun, a resumed job): the old one is set aside, not deleted, until the new
        # one is in place, so a crash in between leaves one of them (restored by recover_set_aside).
        aside = self.root / f".old_step_{step}"
        if aside.exists():
            shutil.rmtree(aside)
        final.rename(aside)
        _fsync(self.root)
        tmp.rename(final)
        _fsync(self.root)
        shutil.rmtree(aside, ignore_errors=True)

    def _stop_together_on(self, error: Exception | None, step: int, tmp: Path) -> None:
        stop_together_on(self.accelerator, error, f"writing checkpoint step_{step} to {tmp}", tmp, self.root)

    # ------------------------------------------------------------------ resume

    def maybe_resume(self, resume: str | None) -> int | None:
        """Load the checkpoint named by ``checkpoint.resume``; returns its step or None.

        The main process chooses (and verifies) the checkpoint; every process loads that one.
        """
        if not resume:
            return None
        acc = self.accelerator
        choice = None
        if acc.is_main_process:
            try:
                path = self._choose(resume)
                choice = ("ok", None if path is None else str(path))
            except CheckpointError as e:
                choice = ("error", str(e))
            except OSError as e:  # unreadable files, a read-only directory: the others must not wait for nothing
                choice = ("error", f"checkpoint.resume={resume!r}: {e}")
        kind, value = broadcast_object(acc, choice)
        if kind == "error":
            raise CheckpointError(value)
        if value is None:
            if acc.is_main_process:
                logger.info("checkpoint.resume=auto: no checkpoint in %s, starting fresh", self.root)
            return None
        path = Path(value)
        error = None
        try:
            acc.load_state(str(path))
        except Exception as e:  # noqa: BLE001 - a legacy checkpoint without manifest may be damaged in any way
            error = e
        failures = failures_everywhere(acc, error)
        if failures is not None:
            what = "; ".join(dict.fromkeys(m for m in failures if m))
            raise CheckpointError(f"loading checkpoint {path} failed: {what}")
        return int((path / COMPLETE).read_text())

    def _choose(self, resume: str) -> Path | None:
        """Main process: the checkpoint to resume from, verified (see the module doc)."""
        recover_set_aside(self.root)
        if resume != "auto":
            path = Path(resume)
            if not (path / COMPLETE).is_file():
                raise CheckpointError(
                    f"checkpoint.resume={resume!r} is not a complete checkpoint directory (no {COMPLETE} marker)"
                )
            damage = self._damage(path)
            if damage:
                raise CheckpointError(
                    f"checkpoint.resume={resume!r} is damaged: {damage} (changed after it was written); "
                    "resume from another checkpoint (checkpoint.resume auto takes the newest intact one)"
                )
            return path
        damaged: list[tuple[Path, str]] = []
        for step, path in reversed(complete_checkpoints(self.root)):
            damage = self._damage(path)
            if damage is None:
                if damaged:  # set aside only once an intact one is found: an error leaves everything in place
                    what = [f"{p.name} is damaged ({d}), set aside as {_set_aside(p).name}" for p, d in damaged]
                    logger.warning(
                        "checkpoint.resume=auto: %s; resuming from step_%d, the newest intact checkpoint",
                        "; ".join(what),
                        step,
                    )
                return path
            damaged.append((path, damage))
        if damaged:
            what = "; ".join(f"{p.name} is damaged ({d})" for p, d in damaged)
            raise CheckpointError(f"checkpoint.resume=auto: no intact checkpoint in {self.root}: {what}")
        return None

    @staticmethod
    def _damage(path: Path) -> str | None:
        try:
            return find_damage(path)
        except FileNotFoundError:
            logger.info("checkpoint %s has no %s (written by an older version): loading it unverified", path, MANIFEST)
            return None
