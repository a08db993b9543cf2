"""``train.compile``: the policy is wrapped by torch.compile through accelerate, generation and saving
see the plain module (compiling itself is measured in bench/, not here: it takes minutes on a CPU)."""

import pytest
import torch
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from safetensors.torch import load_file

from ppo_dist.config import parse_args, validate
from ppo_dist.models import CausalLMWithValueHead, load_tokenizer
from ppo_dist.rl.learner import build_learner
from ppo_dist.runtime import distributed

from .launch import TINY_ARGS


@pytest.fixture
def fresh_accelerate_state():
    """accelerate's state is a process-wide singleton set by the first Accelerator: start and end clean,
    so that the compile setting neither misses this test nor leaks into the next."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_compiled_policy_is_unwrapped_for_generation_and_saved_under_its_own_names(tmp_path, fresh_accelerate_state):
    cfg = parse_args([*TINY_ARGS, "--train.compile", "true", "--log.trackers", "[]"])
    plan = validate(cfg, 1)
    acc = distributed.build_accelerator(cfg, plan)
    set_seed(0)
    tokenizer = load_tokenizer(cfg.model)
    learner = build_learner(cfg, acc, tokenizer, plan)
    assert isinstance(learner.policy.model, torch._dynamo.eval_frame.OptimizedModule)
    assert type(learner.policy.unwrapped) is CausalLMWithValueHead
    learner.save_pretrained(tmp_path, tokenizer)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert "transformer.h.0.attn.c_attn.weight" in saved and not [k for k in saved if "_orig_mod" in k]
    assert (tmp_path / "value_head.pt").is_file()
