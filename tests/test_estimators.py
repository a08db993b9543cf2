"""Critic-free estimators end to end: the GRPO config learns without a value head, and resumes exactly."""

import re
import shutil

import torch
from safetensors.torch import load_file

from .launch import TINY_ARGS, launch

GRPO = ["--config", "configs/grpo.yaml", "--log.progress_bar", "false"]


def test_grpo_config_learns_without_any_value_head(tmp_path):
    proc = launch([*GRPO, "--train.total_steps", "40", "--train.output_dir", str(tmp_path)], timeout=600)
    first, last = map(float, re.search(r"first 10 steps ([\d.]+) -> last 10 steps ([\d.]+)", proc.stdout).groups())
    assert last > first + 0.2, (first, last)
    assert not (tmp_path / "final_model" / "value_head.pt").exists()
    checkpoint = tmp_path / "checkpoints" / "step_40"
    assert not [k for k in load_file(str(checkpoint / "model.safetensors")) if "v_head" in k]
    optimizer = torch.load(checkpoint / "optimizer.bin", weights_only=False)
    n_lm = len([k for k in load_file(str(checkpoint / "model.safetensors"))])  # lm_head is tied: not saved
    assert len(optimizer["state"]) == n_lm  # the optimizer holds the language model's parameters only


def test_grpo_resume_is_bitwise_exact(tmp_path):
    args = [*TINY_ARGS, "--rollout.n_samples_per_prompt", "2", "--ppo.advantage_estimator", "grpo",
            "--ppo.kl_placement", "loss", "--ppo.kl_estimator", "k3", "--train.total_steps", "4",
            "--checkpoint.every", "2"]  # fmt: skip
    full, part = tmp_path / "full", tmp_path / "part"
    launch([*args, "--train.output_dir", str(full)])
    shutil.copytree(full / "checkpoints" / "step_2", part / "checkpoints" / "step_2")
    launch([*args, "--train.output_dir", str(part), "--checkpoint.resume", "auto"])
    a, b = (load_file(str(d / "checkpoints" / "step_4" / "model.safetensors")) for d in (full, part))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    state_a, state_b = (torch.load(d / "checkpoints" / "step_4" / "custom_checkpoint_0.pkl", weights_only=False)
                        for d in (full, part))  # fmt: skip
    assert state_a["history"] == state_b["history"]
