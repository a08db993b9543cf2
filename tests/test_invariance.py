"""The update does not depend on how the global batch is split over processes or micro-batches.

Every variant runs two updates on the same fixed global batch, once on 1 process and once on 2
(tests/scripts/invariance_step.py, all variants in one launch each); statistics of both steps and
every trainable parameter tensor are compared.
"""

import json

import pytest
import torch

from .launch import launch

BASE = [
    "--rollout.batch_size", "8", "--ppo.mini_batch_size", "4", "--ppo.ppo_epochs", "2", "--optim.lr", "1e-3",
    "--model.tiny_n_layer", "1", "--model.tiny_n_embd", "32", "--model.tiny_n_head", "2", "--log.trackers", "[]",
]  # fmt: skip
# 3 prompts x 4 samples = 12 samples, 6 per process on 2: the second prompt's group straddles the processes.
GROUPED = [
    "--rollout.batch_size", "3", "--rollout.n_samples_per_prompt", "4", "--ppo.mini_batch_size", "6",
    "--ppo.kl_placement", "loss", "--ppo.kl_estimator", "k3",
]  # fmt: skip
ON_POLICY = [*GROUPED, "--ppo.advantage_estimator", "grpo", "--ppo.ppo_epochs", "1", "--ppo.mini_batch_size", "12"]
VARIANTS = {
    "gae": [],
    "gae_accumulation": ["--ppo.gradient_accumulation_steps", "2"],
    "gae_forward_micro": ["--rollout.forward_batch_size", "3"],
    # Budgets small enough that mini-batches split into several, uneven micro-batches.
    "gae_token_budget": ["--ppo.micro_batch_tokens", "16", "--rollout.forward_tokens", "16"],
    "gae_packing": ["--ppo.packing", "true", "--ppo.micro_batch_tokens", "24", "--rollout.forward_tokens", "24"],
    "grpo": [*GROUPED, "--ppo.advantage_estimator", "grpo"],
    "grpo_seq_mean_token_mean": [
        *GROUPED,
        "--ppo.advantage_estimator",
        "grpo",
        "--ppo.loss_agg",
        "seq_mean_token_mean",
    ],
    "rloo_seq_mean_token_sum_norm": [
        *GROUPED,
        "--ppo.advantage_estimator",
        "rloo",
        "--ppo.loss_agg",
        "seq_mean_token_sum_norm",
    ],  # fmt: skip
    "rloo_token_budget": [*GROUPED, "--ppo.advantage_estimator", "rloo", "--ppo.micro_batch_tokens", "12"],
    "gae_gradient_checkpointing": ["--model.gradient_checkpointing", "true"],
    "gae_lora": ["--model.lora.r", "4", "--model.lora.alpha", "8"],
    "grpo_on_policy": ON_POLICY,
    "grpo_on_policy_off": [*ON_POLICY, "--ppo.on_policy_shortcut", "false"],
}
COMPARED_STATS = [
    "ppo/loss/policy", "ppo/loss/total", "ppo/policy/clipfrac", "ppo/policy/approxkl", "ppo/policy/entropy",
    "objective/kl", "objective/entropy", "env/reward_mean", "ppo/returns/mean", "ppo/advantages/mean",
]  # fmt: skip


def _run(out, num_processes):
    out.mkdir(parents=True, exist_ok=True)
    launch([str(out), json.dumps(VARIANTS), *BASE], num_processes=num_processes,
           script="tests/scripts/invariance_step.py", timeout=600)  # fmt: skip
    return {name: (json.loads((out / f"{name}.json").read_text()), torch.load(out / f"{name}.pt")) for name in VARIANTS}


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("one"), 1)


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("two"), 2)


def _assert_same(a, b):
    (record_a, params_a), (record_b, params_b) = a, b
    for step_a, step_b in zip(record_a["stats"], record_b["stats"], strict=True):  # step 2 runs on the updated policy
        for k in COMPARED_STATS + [k for k in step_a if k.startswith("ppo/val/") or k == "ppo/loss/value"]:
            assert step_a[k] == pytest.approx(step_b[k], rel=1e-4, abs=1e-6), k
    final_a, final_b = params_a["final"], params_b["final"]
    assert final_a.keys() == final_b.keys()
    # The updates really moved the weights (comparing two untouched models would prove nothing).
    moved = max((final_a[n] - params_a["initial"][n]).abs().max().item() for n in final_a)
    assert moved > 1e-4, moved
    # Adam divides by the gradient's running RMS: a weight whose gradient is at rounding level moves by
    # up to lr in a direction rounding picks (seen: one weight in 4096 off by 4e-5 on one CPU). 1 % of the
    # largest move still catches a process or micro-batch weighted wrongly (off by about lr everywhere).
    for name, tensor in final_a.items():
        torch.testing.assert_close(tensor, final_b[name], rtol=1e-4, atol=max(2e-5, 0.01 * moved), msg=name)


def test_gradient_accumulation_split_gives_the_same_update(one):
    _assert_same(one["gae"], one["gae_accumulation"])


def test_forward_micro_batch_size_gives_the_same_update(one):
    _assert_same(one["gae"], one["gae_forward_micro"])


def test_token_budget_micro_batches_give_the_same_update_as_fixed_size(one):
    counts = one["gae_token_budget"][0]["micro_batches"][0]  # process 0, both steps
    assert max(c for step in counts for c in step) > 1  # the budget did split mini-batches
    _assert_same(one["gae"], one["gae_token_budget"])


def test_gradient_checkpointing_gives_the_same_update(one):
    _assert_same(one["gae"], one["gae_gradient_checkpointing"])


def test_on_policy_shortcut_gives_the_same_update_as_a_separate_old_logprob_pass(one):
    _assert_same(one["grpo_on_policy"], one["grpo_on_policy_off"])


@pytest.mark.distributed
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_processes_give_the_same_update_as_one(one, two, variant):
    _assert_same(one[variant], two[variant])


@pytest.mark.distributed
def test_token_budget_processes_may_run_different_numbers_of_micro_batches(one, two):
    per_rank = two["gae_token_budget"][0]["micro_batches"]  # [rank][step][mini-batch]
    assert len(per_rank) == 2
    assert per_rank[0] != per_rank[1], per_rank  # yet the update equals the fixed-size one on 1 process
    _assert_same(one["gae"], two["gae_token_budget"])
