"""Every launch config in accelerate_configs/, launched for real (DeepSpeed engines on CPU over gloo).

All 2-process modes start from the same seed and the same per-rank rollouts, so DDP, ZeRO-1/2/3
and ZeRO-3 with offload must produce the same statistics and final weights within float tolerance.
"""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from ppo_dist.plot import read_scalars
from tests.launch import REPO, TINY_ARGS, _free_port, cpu_env, launch

pytestmark = pytest.mark.distributed

CONFIGS = REPO / "accelerate_configs"
TWO_PROCESS = ["ddp", "zero1", "zero2", "zero3", "zero3_offload"]
COMPARED = ["ppo/loss/total", "ppo/loss/value", "objective/kl", "env/reward_mean", "ppo/policy/clipfrac"]


def ds_env():
    env = cpu_env()
    env.pop("ACCELERATE_USE_CPU")  # DeepSpeed configs: accelerate must not turn them into MULTI_CPU
    return env


def run_config(name: str, out, extra=()):
    env = cpu_env() if name in ("single", "ddp") else ds_env()
    n = 1 if name == "single" else 2
    launch(
        [*TINY_ARGS, "--train.output_dir", str(out), *extra],
        num_processes=n,
        config_file=CONFIGS / f"{name}.yaml",
        env=env,
    )
    return out


def final_params(out):
    return [p.detach() for p in AutoModelForCausalLM.from_pretrained(out / "final_model").parameters()]


# Compared runs: an LR warm-up/decay and a non-default Adam beta must reach the optimizer that
# DeepSpeed steps (under optimizer offload too); a checkpoint at step 2 is resumed from below.
COMPARED_ARGS = [
    "--optim.lr_scheduler",
    "linear",
    "--optim.warmup_steps",
    "2",
    "--optim.adam_beta2",
    "0.99",
    "--checkpoint.every",
    "2",
]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    return run_config("ddp", tmp_path_factory.mktemp("ddp"), COMPARED_ARGS)


def test_single_process_config(tmp_path):
    run_config("single", tmp_path / "single")
    scalars = read_scalars(tmp_path / "single")
    assert all(math.isfinite(v) for v in scalars["ppo/loss/total"][1])
    # single.yaml is one plain process: the same trained model as a launch without any config file.
    launch([*TINY_ARGS, "--train.output_dir", str(tmp_path / "plain")])
    for a, b in zip(final_params(tmp_path / "single"), final_params(tmp_path / "plain"), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", [n for n in TWO_PROCESS if n != "ddp"])
def test_zero_stage_matches_ddp_and_resumes_exactly(name, ddp_run, tmp_path):
    run_config(name, tmp_path, COMPARED_ARGS)
    ours, ref = read_scalars(tmp_path), read_scalars(ddp_run)
    for tag in COMPARED:
        assert list(ours[tag][0]) == [1, 2, 3]
        assert np.all(np.isfinite(ours[tag][1])), tag
        np.testing.assert_allclose(ours[tag][1], ref[tag][1], rtol=1e-4, atol=1e-5, err_msg=tag)
    # The saved final model is a normal HF directory (consolidated from shards under ZeRO-3).
    for a, b in zip(final_params(tmp_path), final_params(ddp_run), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # The step-2 checkpoint (DeepSpeed engine state, scheduler, RNG) continues to the same final weights.
    if name == "zero1":  # DeepSpeed's stages 1 and 2 share one optimizer and checkpoint format: zero2 resumes it
        return
    resumed = tmp_path / "resumed"
    run_config(name, resumed, [*COMPARED_ARGS, "--checkpoint.resume", str(tmp_path / "checkpoints" / "step_2")])
    assert (resumed / "checkpoints" / "step_3" / "COMPLETE").exists()
    for a, b in zip(final_params(resumed), final_params(tmp_path), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_zero3_shards_parameters_and_gathers_once_per_rollout(tmp_path):
    proc = launch(
        [
            "--rollout.batch_size",
            "4",
            "--ppo.mini_batch_size",
            "2",
            "--log.trackers",
            "[]",
            "--train.output_dir",
            str(tmp_path),
        ],
        num_processes=2,
        config_file=CONFIGS / "zero3.yaml",
        script="tests/scripts/zero3_probe.py",
        env=ds_env(),
    )
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    # Each of 2 ranks holds half of the policy and of the reference (rounded up per tensor).
    assert abs(probe["held"] / probe["full"] - 0.5) < 0.01, probe
    assert abs(probe["ref_held"] / probe["ref_full"] - 0.5) < 0.01, probe
    g = probe["gathers"]
    # Gathered once per rollout: one collective per parameter, however many tokens are generated.
    assert g["on_4"] == g["on_16"] == probe["n_params"], g
    # Switched off, ZeRO-3 gathers at every token's forward: 4x the tokens, 4x the collectives.
    assert g["off_16"] == 4 * g["off_4"] and g["off_4"] > g["on_4"], g


def test_multinode_template_on_two_local_machines(tmp_path):
    """multinode.yaml as two machines on localhost, one process each, filled in by the launcher."""
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(CONFIGS / "multinode.yaml"),
            "--num_machines",
            "2",
            "--num_processes",
            "2",
            "--machine_rank",
            str(rank),
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            port,
            str(REPO / "train.py"),
            *TINY_ARGS,
            "--train.output_dir",
            str(tmp_path),
        ]
        procs.append(
            subprocess.Popen(cmd, cwd=REPO, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "on 2 process(es)" in outputs[0] and "on 2 process(es)" in outputs[1]
    # Two machines of one process each train like one machine with two: the same final model.
    one_machine = run_config("ddp", tmp_path / "one_machine")
    for a, b in zip(final_params(tmp_path), final_params(one_machine), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _user_json_config(tmp_path, micro_batch):
    ds = {
        "zero_optimization": {"stage": 2},
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
    }
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    (tmp_path / "accel.yaml").write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\n"
        f"deepspeed_config:\n  deepspeed_config_file: {tmp_path / 'ds.json'}\n  zero3_init_flag: false\n"
        "num_machines: 1\nnum_processes: 2\nrdzv_backend: static\nsame_network: true\n"
    )
    return tmp_path / "accel.yaml"


def test_user_deepspeed_json_is_accepted_and_disagreement_named(tmp_path):
    good = _user_json_config(tmp_path, "auto")
    launch(
        [*TINY_ARGS, "--train.total_steps", "1", "--train.output_dir", str(tmp_path / "run")],
        num_processes=2,
        config_file=good,
        env=ds_env(),
    )
    bad = _user_json_config(tmp_path, 7)
    proc = launch(
        [*TINY_ARGS, "--train.output_dir", str(tmp_path / "bad")],
        num_processes=2,
        config_file=bad,
        env=ds_env(),
        check=False,
    )
    assert proc.returncode != 0
    assert "train_micro_batch_size_per_gpu=7" in proc.stderr and "ppo_dist config gives 1" in proc.stderr
    assert not (tmp_path / "bad" / "checkpoints").exists()
