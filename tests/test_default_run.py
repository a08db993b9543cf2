"""The main job runs end to end on 1 and 2 processes, and its output reloads and generates."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ppo_dist.models import CausalLMWithValueHead

from .launch import TINY_ARGS, launch


def _reload_and_generate(path):
    tok = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path)
    ids = tok("今天天气", return_tensors="pt")
    out = lm.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]
    policy = CausalLMWithValueHead.from_pretrained(path)
    saved_head = torch.load(path / "value_head.pt", weights_only=True)
    assert torch.equal(policy.v_head.weight, saved_head["weight"])


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_single_process_run_saves_a_reloadable_model(tmp_path, dtype):
    proc = launch([*TINY_ARGS, "--model.dtype", dtype, "--train.output_dir", str(tmp_path)])
    assert "mean reward: first" in proc.stdout
    _reload_and_generate(tmp_path / "final_model")
    assert (tmp_path / "checkpoints" / "step_3" / "COMPLETE").is_file()


@pytest.mark.distributed
def test_two_process_run_saves_a_reloadable_model(tmp_path):
    proc = launch([*TINY_ARGS, "--train.output_dir", str(tmp_path)], num_processes=2)
    assert proc.stdout.count("mean reward: first") == 1  # printed by the main process only
    _reload_and_generate(tmp_path / "final_model")
