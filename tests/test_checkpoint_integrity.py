"""Checkpoints reach the disk before they are marked complete, carry a manifest, and a damaged one is
never resumed from: ``resume auto`` sets it aside for the newest intact one, a named one is an error."""

import errno
import json
import logging
import os
import zlib

import pytest
import torch
from accelerate import Accelerator

from ppo_dist.runtime.checkpoint import (
    COMPLETE,
    MANIFEST,
    CheckpointError,
    CheckpointManager,
    complete_checkpoints,
    find_damage,
)


@pytest.fixture
def saved(tmp_path):
    """Checkpoints step_1 and step_2 of a Linear whose weights are all 1.0, then all 2.0."""
    acc = Accelerator()
    model = acc.prepare(torch.nn.Linear(64, 64))
    manager = CheckpointManager(acc, tmp_path / "checkpoints", keep=5)
    for step in (1, 2):
        with torch.no_grad():
            model.weight.fill_(float(step))
        manager.save(step)
    with torch.no_grad():
        model.weight.fill_(0.0)
    return manager, model


def _files(ckpt):
    return sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file())


def test_manifest_records_size_and_crc32_of_every_file(saved):
    manager, _ = saved
    ckpt = manager.root / "step_2"
    files = json.loads((ckpt / MANIFEST).read_text())["files"]
    assert sorted(files) == [f for f in _files(ckpt) if f not in (COMPLETE, MANIFEST)]
    assert "model.safetensors" in files and "random_states_0.pkl" in files
    for name, entry in files.items():
        data = (ckpt / name).read_bytes()
        assert entry == {"size": len(data), "crc32": f"{zlib.crc32(data):08x}"}
    assert find_damage(ckpt) is None


def test_damage_is_named_truncated_overwritten_missing_or_unreadable_manifest(saved):
    manager, _ = saved
    ckpt = manager.root / "step_2"
    weights = ckpt / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:100])
    assert find_damage(ckpt) == f"model.safetensors has 100 bytes, the manifest recorded {len(original)}"
    weights.write_bytes(original[:-4] + b"\0\0\0\0")  # same size: only the checksum tells
    assert find_damage(ckpt).startswith("model.safetensors does not match its checksum (CRC-32 ")
    weights.unlink()
    assert find_damage(ckpt) == "model.safetensors is missing"
    weights.write_bytes(original)
    assert find_damage(ckpt) is None
    (ckpt / MANIFEST).write_text("{not json")
    assert find_damage(ckpt).startswith(f"{MANIFEST} is unreadable (JSONDecodeError")
    (ckpt / MANIFEST).unlink()
    with pytest.raises(FileNotFoundError):
        find_damage(ckpt)


def test_every_file_and_directory_is_fsynced_before_complete_then_the_rename_is(tmp_path, monkeypatch):
    acc = Accelerator()
    model = acc.prepare(torch.nn.Linear(8, 8))
    manager = CheckpointManager(acc, tmp_path / "checkpoints", keep=5)
    synced, real_fsync = [], os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    final = manager.save(7)
    assert model is not None and (final / COMPLETE).read_text() == "7"
    tmp = str(tmp_path / "checkpoints" / ".tmp_step_7")
    complete_at = synced.index(f"{tmp}/{COMPLETE}")
    before = set(synced[:complete_at])
    for name in _files(final):
        if name != COMPLETE:
            assert f"{tmp}/{name}" in before, name  # data files and the manifest
    assert tmp in before  # the directory entries
    assert synced[complete_at + 1 :] == [tmp, str(tmp_path / "checkpoints")]  # COMPLETE's entry, then the rename


def test_resume_auto_sets_damaged_checkpoints_aside_in_one_line_and_loads_the_newest_intact(saved, caplog):
    manager, model = saved
    weights = manager.root / "step_2" / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:100])
    with caplog.at_level(logging.INFO, logger="ppo_dist.runtime.checkpoint"):
        assert manager.maybe_resume("auto") == 1
    assert torch.all(model.weight == 1.0)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            f"checkpoint.resume=auto: step_2 is damaged (model.safetensors has 100 bytes, the manifest recorded "
            f"{size}), set aside as step_2.damaged; resuming from step_1, the newest intact checkpoint",
        )
    ]
    assert [s for s, _ in complete_checkpoints(manager.root)] == [1]
    assert (manager.root / "step_2.damaged" / "model.safetensors").stat().st_size == 100  # kept, not deleted


def test_resume_auto_with_every_checkpoint_damaged_is_an_error_not_a_fresh_start(saved):
    manager, _ = saved
    for step in (1, 2):
        (manager.root / f"step_{step}" / "random_states_0.pkl").unlink()
    with pytest.raises(CheckpointError, match="no intact checkpoint in .*step_2 is damaged .*step_1 is damaged"):
        manager.maybe_resume("auto")
    # Left in place: a rerun (or a requeued job) fails the same way instead of starting afresh.
    assert [s for s, _ in complete_checkpoints(manager.root)] == [1, 2]


def test_explicitly_named_damaged_checkpoint_is_an_error_naming_the_file(saved):
    manager, model = saved
    path = manager.root / "step_2"
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(CheckpointError, match=r"is damaged: model.safetensors does not match its checksum"):
        manager.maybe_resume(str(path))
    assert torch.all(model.weight == 0.0) and path.is_dir()  # nothing loaded, nothing moved


def test_checkpoint_without_manifest_loads_unverified_and_says_so_once(saved, caplog):
    manager, model = saved
    (manager.root / "step_2" / MANIFEST).unlink()
    with caplog.at_level(logging.INFO, logger="ppo_dist.runtime.checkpoint"):
        assert manager.maybe_resume("auto") == 2
    assert torch.all(model.weight == 2.0)
    assert [r.getMessage() for r in caplog.records] == [
        f"checkpoint {manager.root / 'step_2'} has no {MANIFEST} (written by an older version): loading it unverified"
    ]


def test_save_after_falling_back_keeps_the_intact_checkpoints(saved):
    manager, _ = saved
    weights = manager.root / "step_2" / "model.safetensors"
    weights.write_bytes(b"")
    assert manager.maybe_resume("auto") == 1
    manager.keep = 1
    manager.save(2)  # the damaged step_2 was set aside: rotation sees only intact checkpoints
    assert [s for s, _ in complete_checkpoints(manager.root)] == [2]
    assert find_damage(manager.root / "step_2") is None
    assert (manager.root / "step_2.damaged").is_dir()


def test_resave_sets_the_old_checkpoint_aside_until_the_new_one_is_in_place(saved, monkeypatch):
    """Re-saving step_2 never deletes the old one first: a failure at the worst moment (after the old one
    is set aside, before the new one is renamed in) leaves the old one, and resume puts it back."""
    manager, model = saved
    root = manager.root
    with torch.no_grad():
        model.weight.fill_(5.0)
    manager.save(2)  # a plain re-save: the new step_2 (weights 5.0) in place, nothing left aside
    assert [s for s, _ in complete_checkpoints(root)] == [1, 2] and not list(root.glob(".old_step_*"))

    real_rename = type(root).rename

    def rename(self, target):
        if self.name == ".tmp_step_2":  # the new checkpoint's rename into place fails (a crash there)
            raise OSError(28, "No space left on device")
        return real_rename(self, target)

    monkeypatch.setattr(type(root), "rename", rename)
    with torch.no_grad():
        model.weight.fill_(7.0)
    with pytest.raises(CheckpointError, match="step_2.*No space left"):
        manager.save(2)
    monkeypatch.undo()
    assert not (root / "step_2").exists() and (root / ".old_step_2" / COMPLETE).is_file()
    assert manager.maybe_resume("auto") == 2  # set back in place and loaded
    assert (root / "step_2" / COMPLETE).is_file() and not list(root.glob(".old_step_*"))
    assert torch.all(model.weight == 5.0)  # the old step_2, not the half-saved new one


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_previous(saved, monkeypatch):
    manager, _ = saved

    def no_space(path, *args, **kwargs):  # half a file written, then ENOSPC
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "model.safetensors"), "wb") as f:
            f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(manager.accelerator, "save_state", no_space)
    with pytest.raises(CheckpointError) as failure:
        manager.save(3)
    message = str(failure.value)
    assert "\n" not in message and "No space left on device" in message and "step_2 is intact" in message
    assert [s for s, _ in complete_checkpoints(manager.root)] == [1, 2]
    assert not (manager.root / ".tmp_step_3").exists()
    monkeypatch.undo()
    assert manager.maybe_resume("auto") == 2
