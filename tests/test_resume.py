"""Checkpoints resume exactly, survive a kill mid-write, and a preemption signal checkpoints and exits 75."""

import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from ppo_dist.checkpoint import complete_checkpoints
from ppo_dist.trainer import PREEMPTED_EXIT_CODE

from .launch import REPO, TINY_ARGS, cpu_env, launch

ARGS = [*TINY_ARGS, "--train.total_steps", "6", "--checkpoint.every", "3", "--checkpoint.keep", "5"]


def _state(ckpt):
    model = load_file(str(ckpt / "model.safetensors"))
    trainer_state = torch.load(ckpt / "custom_checkpoint_0.pkl", weights_only=False)
    return model, trainer_state


def _resume_and_compare(tmp_path, num_processes, exact):
    full, part = tmp_path / "full", tmp_path / "part"
    launch([*ARGS, "--train.output_dir", str(full)], num_processes=num_processes)
    # Continue from the step-3 checkpoint of an identical run in a fresh directory.
    shutil.copytree(full / "checkpoints" / "step_3", part / "checkpoints" / "step_3")
    launch([*ARGS, "--train.output_dir", str(part), "--checkpoint.resume", "auto"], num_processes=num_processes)
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
    assert s_full["engine"]["kl_ctl"] == s_part["engine"]["kl_ctl"] or not exact


def test_resume_is_bitwise_exact_on_one_process(tmp_path):
    _resume_and_compare(tmp_path, 1, exact=True)


@pytest.mark.distributed
def test_resume_matches_on_two_processes(tmp_path):
    _resume_and_compare(tmp_path, 2, exact=False)


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


def _start(args, tmp_path):
    cmd = [sys.executable, str(REPO / "train.py"), *args, "--train.output_dir", str(tmp_path)]
    return subprocess.Popen(cmd, cwd=REPO, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(pred, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited {proc.returncode} early:\n{proc.stdout.read()[-4000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out")


def test_kill_during_checkpoint_write_leaves_previous_checkpoint_loadable(tmp_path):
    # Big enough that writing a checkpoint takes a moment; kill -9 as soon as a temporary dir appears.
    args = [
        *TINY_ARGS,
        "--train.total_steps",
        "50",
        "--checkpoint.every",
        "1",
        "--model.tiny_n_embd",
        "256",
        "--model.tiny_n_layer",
        "4",
        "--train.save_final_model",
        "false",
    ]
    proc = _start(args, tmp_path)
    root = tmp_path / "checkpoints"
    _wait_for(lambda: bool(complete_checkpoints(root)), proc)
    done = {s for s, _ in complete_checkpoints(root)}
    _wait_for(
        lambda: any(
            p.name.startswith(".tmp_step_") and int(p.name.rsplit("_", 1)[1]) not in done for p in root.iterdir()
        ),
        proc,
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpts = complete_checkpoints(root)
    assert ckpts, "no complete checkpoint left"
    step, path = ckpts[-1]
    # The newest complete checkpoint loads: resume from it and finish.
    proc2 = launch(
        [
            *args,
            "--train.total_steps",
            str(step + 1),
            "--checkpoint.resume",
            "auto",
            "--train.output_dir",
            str(tmp_path),
        ]
    )
    assert proc2.returncode == 0
    assert (root / f"step_{step + 1}" / "COMPLETE").is_file()


def test_sigusr1_checkpoints_and_exits_with_preempted_status_then_resumes(tmp_path):
    args = [*TINY_ARGS, "--train.total_steps", "400", "--train.save_final_model", "false"]
    proc = _start(args, tmp_path)
    time.sleep(0)  # the handler is installed once training starts: wait for the first step's output dir
    _wait_for(lambda: (tmp_path / "ppo_dist").exists() or any(tmp_path.glob("**/events.out.tfevents*")), proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=120) == PREEMPTED_EXIT_CODE
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
