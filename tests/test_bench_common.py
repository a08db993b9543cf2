"""bench/common.py: the shared benchmark settings stay in step with the project."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import common  # noqa: E402

from ppo_dist.rewards import chinese_rule  # noqa: E402

from .launch import REPO  # noqa: E402

TEXTS = [
    "",
    "好",
    "今天天气很好，我喜欢学习，每天都开心快乐地成长。",
    "好好好好好好",
    "开心开心开心开心",
    "  这部电影真棒，非常有趣  ",
    "a b c d e f",
    "学习" * 30,
    "快乐的一天",
    "人工智能正在改变世界，机器学习很有趣。",
]


def test_rule_reward_matches_project_reward():
    assert common.rule_reward(TEXTS) == chinese_rule([""] * len(TEXTS), TEXTS)


def test_rule_reward_hand_values():
    # 0.1 base + 0.5 length; "好" and "喜欢" and "开心" count once each; no repetition.
    assert common.rule_reward(["我很好，我喜欢你，今天很开心"]) == [pytest.approx(0.1 + 0.5 + 0.9)]
    # 6 chars -> 5 bigrams, 1 distinct: repetition penalty; "好" once; too short for the length bonus.
    assert common.rule_reward(["好好好好好好"]) == [pytest.approx(0.1 + 0.3 - 0.2)]


def test_prompts_cycle_in_batches_of_eight():
    assert len(common.PROMPTS) == 16
    assert common.prompt_batch(0) == common.PROMPTS[:8]
    assert common.prompt_batch(1) == common.PROMPTS[8:]
    assert common.prompt_batch(2) == common.PROMPTS[:8]


def test_build_model_dir_counts_and_reloads(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = common.build_model_dir("150k", tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == common.count_params("150k") == 149_248
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(common.PROMPTS[0])
    assert set(enc) == {"input_ids", "attention_mask"}  # no token_type_ids (GPT-2 would embed them)
    assert (tok.pad_token_id, tok.eos_token_id, tok.padding_side) == (1, 0, "left")
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    common.build_model_dir("150k", out)  # idempotent: not rewritten
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime


def test_param_counts_of_all_shapes():
    counts = {s: common.count_params(s) for s in common.SHAPES}
    assert counts == {"150k": 149_248, "3m": 3_356_160, "3m-nodrop": 3_356_160, "124m": 86_235_648}
    assert common.SHAPES["3m-nodrop"]["resid_pdrop"] == common.SHAPES["3m-nodrop"]["attn_pdrop"] == 0.0


def test_race_rewards_by_hand():
    import race_tasks

    texts = ["12 ab", "", "abcdef", "a" * 18, "中文12"]
    assert race_tasks.digits([], texts) == pytest.approx([0.5, 0.0, 0.0, 0.0, 0.5])
    assert race_tasks.brief([], texts) == pytest.approx([1.0, 0.0, 1.0, 0.5, 1.0])  # 18 chars: (30-18)/24
    assert race_tasks.latin([], texts) == pytest.approx([0.5, 0.0, 1.0, 1.0, 0.0])


def test_append_markdown_row_creates_and_extends_tables(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## Other\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\ntext after\n")
    common.append_markdown_row(md, "Other", {"a": 3, "b": 0.123456})
    common.append_markdown_row(md, "PPO", {"system": "x|y", "s_per_step": 0.1331})
    common.append_markdown_row(md, "PPO", {"system": "z"})
    assert md.read_text() == (
        "# Benchmarks\n\n## Other\n\n| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 0.123 |\n\ntext after\n\n"
        "## PPO\n\n| system | s_per_step |\n|---|---|\n| x\\|y | 0.133 |\n| z |  |\n"
    )
    with pytest.raises(ValueError, match="not in table"):
        common.append_markdown_row(md, "Other", {"zz": 1})


def test_emit_prints_one_json_line(tmp_path, capsys):
    common.emit({"system": "s", "reward": 1.5, "prompt": "今天"}, tmp_path / "o.jsonl")
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and json.loads(line)["prompt"] == "今天"
    assert json.loads((tmp_path / "o.jsonl").read_text()) == {"system": "s", "reward": 1.5, "prompt": "今天"}


def test_gpu_check_runs_in_cpu_mode_and_writes_every_number(tmp_path):
    """bench/gpu_check.py is run on a GPU rarely: its CPU mode on tiny shapes keeps it from rotting."""
    out = tmp_path / "check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--tiny", "--steps", "1", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and set(report["shapes"]) == {"gpt2-tiny", "llama-tiny"}
    for shape in report["shapes"].values():
        for key in ("hf_generation_tokens_per_s", "update_tokens_per_s", "update_mfu", "peak_memory_gb"):
            assert shape[key] > 0, key
        assert shape["prompts"] * shape["new_tokens"] == 8 * 16
