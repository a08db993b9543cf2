"""The update does not depend on how the global batch is split over processes or micro-batches."""

import json

import pytest

from .launch import launch

BASE = [
    "--rollout.batch_size",
    "8",
    "--ppo.mini_batch_size",
    "4",
    "--ppo.ppo_epochs",
    "2",
    "--optim.lr",
    "1e-3",
    "--model.tiny_n_layer",
    "1",
    "--model.tiny_n_embd",
    "32",
    "--model.tiny_n_head",
    "2",
]
COMPARED = [
    "ppo/loss/policy",
    "ppo/loss/value",
    "ppo/loss/total",
    "ppo/policy/clipfrac",
    "ppo/policy/approxkl",
    "ppo/val/error",
    "ppo/policy/entropy",
    "objective/kl",
    "env/reward_mean",
    "ppo/returns/mean",
]


def _run(tmp_path, name, extra=(), num_processes=1):
    out = tmp_path / f"{name}.json"
    launch([str(out), *BASE, *extra], num_processes=num_processes, script="tests/scripts/invariance_step.py")
    return json.loads(out.read_text())


def _assert_same(a, b):
    for step_a, step_b in zip(a["stats"], b["stats"], strict=True):  # the second step runs on the updated policy
        for k in COMPARED:
            assert step_a[k] == pytest.approx(step_b[k], rel=1e-4, abs=1e-6), k
    for name in a["params"]:
        assert a["params"][name] == pytest.approx(b["params"][name], rel=1e-4, abs=1e-4), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("ref"), "one_process")


def test_gradient_accumulation_split_gives_the_same_update(reference, tmp_path):
    _assert_same(reference, _run(tmp_path, "accum", ["--ppo.gradient_accumulation_steps", "2"]))


def test_forward_micro_batch_size_gives_the_same_update(reference, tmp_path):
    _assert_same(reference, _run(tmp_path, "fwd", ["--rollout.forward_batch_size", "3"]))


@pytest.mark.distributed
def test_two_processes_give_the_same_update_as_one(reference, tmp_path):
    _assert_same(reference, _run(tmp_path, "two", num_processes=2))


@pytest.mark.distributed
def test_two_processes_with_accumulation_give_the_same_update(reference, tmp_path):
    _assert_same(reference, _run(tmp_path, "two_accum", ["--ppo.gradient_accumulation_steps", "2"], num_processes=2))
