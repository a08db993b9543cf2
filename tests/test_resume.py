"""Checkpoints resume exactly, survive a kill mid-write, and a preemption signal checkpoints and exits 75."""

import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from ppo_dist.runtime.checkpoint import FAULT_PAUSE_ENV, complete_checkpoints
from ppo_dist.runtime.guards import PREEMPTED_EXIT_CODE

from .launch import READY, REPO, TINY_ARGS, Output, cpu_env, launch

ARGS = [*TINY_ARGS, "--train.total_steps", "6", "--checkpoint.every", "3", "--checkpoint.keep", "5"]


def _state(ckpt):
    model = load_file(str(ckpt / "model.safetensors"))
    trainer_state = torch.load(ckpt / "custom_checkpoint_0.pkl", weights_only=False)
    return model, trainer_state


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _overwrite_middle(path):  # same size: only the checksum tells
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = bytes(16)
    path.write_bytes(bytes(data))


def _full_and_resumed_runs(tmp_path, num_processes, damage):
    """An uninterrupted 6-step run, and one resumed at step 3 past a damaged copy of its step-6 checkpoint."""
    full, part = tmp_path / "full", tmp_path / "part"
    launch([*ARGS, "--train.output_dir", str(full)], num_processes=num_processes)
    # Continue from the step-3 checkpoint of an identical run in a fresh directory. A newer checkpoint is
    # there too, damaged after it was written: resume auto must set it aside and take step 3.
    for step in (3, 6):
        shutil.copytree(full / "checkpoints" / f"step_{step}", part / "checkpoints" / f"step_{step}")
    damage(part / "checkpoints" / "step_6")
    resumed = launch(
        [*ARGS, "--train.output_dir", str(part), "--checkpoint.resume", "auto"], num_processes=num_processes
    )
    return full, part, resumed.stderr


def _assert_resumed_like_full(full, part, log, damaged_file, exact):
    fallback = [line for line in log.splitlines() if "is damaged" in line]
    assert len(fallback) == 1, log[-3000:]  # one line, from the main process only
    assert f"step_6 is damaged ({damaged_file}" in fallback[0] and "resuming from step_3" in fallback[0]
    assert "resumed from step 3" in log and (part / "checkpoints" / "step_6.damaged").is_dir()
    (m_full, s_full), (m_part, s_part) = (
        _state(full / "checkpoints" / "step_6"),
        _state(part / "checkpoints" / "step_6"),
    )
    assert s_part["engine"]["global_step"] == 6
    assert len(s_part["history"]) == len(s_full["history"]) == 6
    for name in m_full:
        if exact:
            assert torch.equal(m_full[name], m_part[name]), name
        else:
            torch.testing.assert_close(m_full[name], m_part[name], rtol=1e-4, atol=1e-5)
    for h_full, h_part in zip(s_full["history"], s_part["history"], strict=True):
        for k in h_full:
            assert h_full[k] == (h_part[k] if exact else pytest.approx(h_part[k], rel=1e-4, abs=1e-6)), k
    kl_full, kl_part = s_full["engine"]["kl_ctl"]["value"], s_part["engine"]["kl_ctl"]["value"]
    assert kl_full != 0.05  # the adaptive controller moved from ppo.kl_coef: the comparison means something
    assert kl_full == (kl_part if exact else pytest.approx(kl_part, rel=1e-4))


@pytest.fixture(scope="module")
def one_process_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume1")
    return (*_full_and_resumed_runs(tmp, 1, lambda ckpt: _truncate(ckpt / "model.safetensors")), tmp)


def test_resume_is_bitwise_exact_on_one_process_past_a_damaged_newest_checkpoint(one_process_runs):
    full, part, log, _ = one_process_runs
    _assert_resumed_like_full(full, part, log, "model.safetensors has", exact=True)


@pytest.mark.distributed
def test_resume_matches_on_two_processes_past_a_damaged_newest_checkpoint(tmp_path):
    full, part, log = _full_and_resumed_runs(tmp_path, 2, lambda ckpt: _overwrite_middle(ckpt / "optimizer.bin"))
    # Both processes resumed from the step the main process chose.
    assert log.count("resumed from step 3") == 2
    _assert_resumed_like_full(full, part, log, "optimizer.bin does not match its checksum", exact=False)


def test_explicitly_named_damaged_checkpoint_is_a_one_line_error(one_process_runs):
    full, _, _, tmp = one_process_runs
    ckpt = tmp / "explicit" / "step_3"
    shutil.copytree(full / "checkpoints" / "step_3", ckpt)
    _truncate(ckpt / "model.safetensors")
    cmd = [sys.executable, "train.py", *ARGS, "--train.output_dir", str(tmp / "run"), "--checkpoint.resume", str(ckpt)]
    proc = subprocess.run(cmd, cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: checkpoint.resume=") and "is damaged: model.safetensors has" in last, last
    assert not complete_checkpoints(tmp / "run" / "checkpoints")  # nothing trained, nothing saved


def test_checkpoint_rotation_keeps_the_newest(tmp_path):
    launch(
        [
            *TINY_ARGS,
            "--train.total_steps",
            "4",
            "--checkpoint.every",
            "1",
            "--checkpoint.keep",
            "2",
            "--train.output_dir",
            str(tmp_path),
            "--train.save_final_model",
            "false",
        ]
    )
    assert [s for s, _ in complete_checkpoints(tmp_path / "checkpoints")] == [3, 4]


def _start(args, tmp_path, env: dict[str, str] | None = None) -> Output:
    cmd = [sys.executable, str(REPO / "train.py"), *args, "--train.output_dir", str(tmp_path)]
    return Output(
        subprocess.Popen(
            cmd, cwd=REPO, env=cpu_env(**(env or {})), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    )


def _wait_for(pred, out: Output, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        if out.proc.poll() is not None:
            raise AssertionError(f"trainer exited {out.proc.returncode} early:\n{out.finish()[-4000:]}")
        time.sleep(0.05)
    out.proc.kill()
    raise AssertionError("timed out")


def test_kill_during_checkpoint_write_leaves_previous_checkpoint_loadable(tmp_path):
    # The fault hook stops the trainer with every file of step 2 written but the checkpoint neither
    # marked complete nor renamed; kill -9 it there, which is during the write and not before or after.
    args = [*TINY_ARGS, "--train.total_steps", "5", "--checkpoint.every", "1", "--train.save_final_model", "false"]
    out = _start(args, tmp_path, env={FAULT_PAUSE_ENV: "checkpoint_written:2"})
    root = tmp_path / "checkpoints"
    _wait_for(lambda: (root / ".tmp_step_2" / ".paused").exists(), out)
    out.proc.send_signal(signal.SIGKILL)
    out.finish()
    assert (root / ".tmp_step_2" / "model.safetensors").is_file()  # killed mid-checkpoint, files on disk
    assert [s for s, _ in complete_checkpoints(root)] == [1]
    # resume auto starts from the newest intact checkpoint and finishes.
    proc2 = launch([*args, "--checkpoint.resume", "auto", "--train.output_dir", str(tmp_path)])
    assert "resumed from step 1" in proc2.stderr
    assert [s for s, _ in complete_checkpoints(root)][-1] == 5 and not (root / ".tmp_step_2").exists()


def test_sigusr1_checkpoints_and_exits_with_preempted_status_then_resumes(tmp_path):
    args = [*TINY_ARGS, "--train.total_steps", "400", "--train.save_final_model", "false"]
    out = _start(args, tmp_path)
    out.wait_for(READY)  # the checkpoint-and-stop handler is installed
    out.proc.send_signal(signal.SIGUSR1)
    out.finish(timeout=120)
    assert out.proc.returncode == PREEMPTED_EXIT_CODE, out.text[-3000:]
    ((step, path),) = complete_checkpoints(tmp_path / "checkpoints")
    assert 0 < step < 400
    launch(
        [
            *args,
            "--train.total_steps",
            str(step + 2),
            "--checkpoint.resume",
            "auto",
            "--train.output_dir",
            str(tmp_path),
        ]
    )
    assert complete_checkpoints(tmp_path / "checkpoints")[-1][0] == step + 2
