"""The PPO epochs keep their decisions on the device: no host read per micro-batch or optimiser step,
and a non-finite update is skipped by the fused AdamW itself."""

import logging
import traceback
from pathlib import Path

import pytest
import torch

import ppo_dist
from ppo_dist.rl import roles, update
from ppo_dist.rl.rollout import Rollout, left_pad, right_pad

from .learners import tiny_learner

# 4 samples, mini-batches of 2 in micro-batches of 1, 2 epochs: 4 optimiser steps of 2 micro-batches each;
# a reference (KL in the reward) and the value head, so every pass and loss term runs.
UPDATE = ["--ppo.mini_batch_size", "2", "--ppo.ppo_epochs", "2", "--optim.lr", "1e-3"]
UPDATE += ["--rollout.forward_batch_size", "1", "--ppo.gradient_accumulation_steps", "2"]
SCORES = torch.tensor([1.0, -0.5, 0.3, 0.8])
# Every way Python code reads a tensor back to the host.
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


def _rollout(pad_id: int) -> Rollout:
    gen = torch.Generator().manual_seed(5)
    queries = [torch.randint(3, 200, (n,), generator=gen) for n in (4, 2, 5, 3)]
    responses = [torch.randint(3, 200, (n,), generator=gen) for n in (6, 3, 1, 5)]
    return Rollout(*left_pad(queries, pad_id), *right_pad(responses, pad_id))


# GRPO with one optimiser step per rollout: the on-policy shortcut (the update's forward gives the old logprobs).
SHORTCUT = ["--ppo.advantage_estimator", "grpo", "--rollout.n_samples_per_prompt", "2", "--ppo.ppo_epochs", "1"]
SHORTCUT += [
    "--ppo.mini_batch_size",
    "4",
    "--rollout.forward_batch_size",
    "1",
    "--ppo.gradient_accumulation_steps",
    "2",
]
SHORTCUT += [
    "--ppo.kl_placement",
    "loss",
    "--ppo.kl_estimator",
    "k3",
    "--ppo.kl_coef",
    "0.04",
    "--ppo.adaptive_kl",
    "false",
]


def _learner_and_experience(args: list[str], batch_size: int):
    learner, tok = tiny_learner(args, batch_size=batch_size)
    exp = learner.experience.from_rollout(_rollout(tok.pad_token_id), SCORES, step=1)
    return learner, exp


@pytest.fixture
def learner_and_experience():
    return _learner_and_experience(UPDATE, 4)


def _reads_by_ppo_dist(monkeypatch) -> list[tuple[str, str, str]]:
    """Every host read that ppo_dist's own code makes (the read's direct caller is in the package;
    transformers' own, such as its sdpa mask check, are not counted): ``(read, where, here)``, where is
    the update's method that planned or summed up the step (the innermost of the update's methods), or
    else ``here``, the ``file:line`` that read."""
    reads: list[tuple[str, str, str]] = []
    package = str(Path(ppo_dist.__file__).parent)
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            stack = traceback.extract_stack()[:-1]
            if stack[-1].filename.startswith(package):
                update = [f.name for f in reversed(stack) if f.filename == UPDATE_FILE and f.name in METHODS]
                here = f"{Path(stack[-1].filename).name}:{stack[-1].lineno}"
                where = update[0] if update and update[0] in PER_STEP else here
                reads.append((_name, where, here))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


# The update's methods that run once per PPO step, not per micro-batch: the plan and the summary.
PER_STEP = ("_schedule", "step")
UPDATE_FILE, METHODS = update.__file__, set(vars(update.PPOUpdate))


@pytest.mark.parametrize("setting", ["ppo", "grpo_shortcut"])
def test_the_ppo_epochs_read_nothing_back_per_micro_batch(monkeypatch, setting):
    learner, exp = _learner_and_experience(*((UPDATE, 4) if setting == "ppo" else (SHORTCUT, 2)))
    assert learner.update._skip_on_device  # fused AdamW, constant schedule, no DeepSpeed
    assert (exp.logprobs is None) == (setting == "grpo_shortcut")
    reads = _reads_by_ppo_dist(monkeypatch)
    learner.update.step(exp)
    monkeypatch.undo()
    # ppo: 4 optimiser steps of 2 micro-batches; grpo_shortcut: 1 of 2
    assert learner.update.micro_batch_counts == ([2] * 4 if setting == "ppo" else [2])
    if setting == "grpo_shortcut":
        assert exp.logprobs is not None and exp.logprobs.shape == exp.advantages.shape
    per_micro_batch = [r for r in reads if r[1] not in PER_STEP]
    assert not per_micro_batch, per_micro_batch
    # The update's own reads, once per step: the lengths for the plan, the skip count. (The plan's
    # host-side work on those lengths, in batching.py, reads CPU tensors only.)
    own = [(name, where) for name, where, here in reads if here.startswith("update.py")]
    assert own == [("cpu", "_schedule"), ("item", "step")], own


def test_a_non_finite_update_is_skipped_on_the_device_and_counted_once_per_step(learner_and_experience, caplog):
    learner, exp = learner_and_experience
    params = list(learner.policy.unwrapped.parameters())
    before = [p.detach().clone() for p in params]
    exp.advantages = torch.full_like(exp.advantages, float("nan"))  # every gradient is NaN
    with caplog.at_level(logging.WARNING, logger="ppo_dist.rl.update"):
        learner.update.step(exp)
    assert learner.update.skipped_updates == 4
    assert "non-finite gradient norm at step 1: 4 optimiser update(s) skipped" in caplog.text
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p.detach(), b)  # parameters untouched, not NaN
    inner = learner.update.optimizer.optimizer
    assert all(float(s["step"]) == 0 for s in inner.state.values())  # Adam's step count not advanced
    assert all(torch.isfinite(s["exp_avg"]).all() for s in inner.state.values())  # nor its moments poisoned

    good = learner.experience.from_rollout(_rollout(learner.experience.tokenizer.pad_token_id), SCORES, step=2)
    learner.update.step(good)  # the next finite step updates (found_inf does not stick)
    assert learner.update.skipped_updates == 4
    assert all(float(s["step"]) == 4 for s in inner.state.values())
    assert max(float((p.detach() - b).abs().max()) for p, b in zip(params, before, strict=True)) > 1e-5


def test_the_scoring_passes_read_the_masks_once_per_pass_and_nothing_per_micro_batch(monkeypatch):
    learner, tok = tiny_learner(UPDATE, batch_size=4)  # forward_batch_size 1: 4 micro-batches per pass
    reads = _reads_by_ppo_dist(monkeypatch)
    exp = learner.experience.from_rollout(_rollout(tok.pad_token_id), SCORES, step=1)
    monkeypatch.undo()
    assert exp.logprobs is not None and exp.ref_logprobs is not None and exp.values is not None
    assert not [r for r in reads if r[2].startswith("rollout.py")]  # select() is given the widths
    # The policy's pass (logprobs and values) and the reference's read the lengths once each, and
    # nothing else; the widths come from them on the host (batching.planned_widths).
    source = Path(roles.__file__).read_text().splitlines()
    line = next(n for n, text in enumerate(source, 1) if "the pass's one read of the masks" in text)
    own = [(name, here) for name, _, here in reads if here.startswith("roles.py")]
    assert own == [("cpu", f"roles.py:{line}")] * 2, own


def test_select_with_the_planned_widths_equals_select_from_the_masks():
    gen = torch.Generator().manual_seed(11)
    for _ in range(50):
        n = int(torch.randint(1, 6, (1,), generator=gen))
        q_lens, r_lens = torch.randint(0, 6, (n,), generator=gen), torch.randint(0, 6, (n,), generator=gen)
        queries = [torch.randint(3, 200, (int(k),), generator=gen) for k in q_lens]
        responses = [torch.randint(3, 200, (int(k),), generator=gen) for k in r_lens]
        rollout = Rollout(*left_pad(queries, 1), *right_pad(responses, 1))
        idx = torch.randperm(n, generator=gen)[: int(torch.randint(1, n + 1, (1,), generator=gen))]
        widths = (int(q_lens[idx].max()), int(r_lens[idx].max()))
        planned, from_masks = rollout.select(idx, widths), rollout.select(idx)
        for a, b in zip(vars(planned).values(), vars(from_masks).values(), strict=True):
            assert (a is None and b is None) or torch.equal(a, b)
