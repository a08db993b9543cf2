"""ppo.packing: packed forwards score, differentiate and update as the padded ones do."""

import pytest
import torch
import transformers.masking_utils

from ppo_dist.models import ModelLoadError, value_head
from ppo_dist.models.packing import first_fit_rows, packed_layout
from ppo_dist.rl.batching import plan_micro_batches
from ppo_dist.rl.rollout import Rollout, left_pad, right_pad

from .learners import tiny_learner

# Uneven queries and responses (a 1-token response, a response that fills its row), KL in the reward and a critic.
QUERY_LENS = [7, 3, 1, 5, 2, 4]
RESPONSE_LENS = [11, 2, 9, 1, 6, 3]
SCORES = torch.tensor([1.0, -0.5, 0.3, 0.0, 0.8, -1.0])
UPDATE = ["--ppo.mini_batch_size", "3", "--ppo.ppo_epochs", "2", "--optim.lr", "1e-3", "--ppo.micro_batch_tokens", "20"]
UPDATE += ["--rollout.forward_tokens", "20", "--ppo.entropy_coef", "0.01"]


def _rollout(pad_id: int) -> Rollout:
    gen = torch.Generator().manual_seed(3)
    queries = [torch.randint(3, 200, (n,), generator=gen) for n in QUERY_LENS]
    responses = [torch.randint(3, 200, (n,), generator=gen) for n in RESPONSE_LENS]
    return Rollout(*left_pad(queries, pad_id), *right_pad(responses, pad_id))


def test_layout_places_every_real_token_once_and_keeps_each_sample_contiguous():
    rows, offsets, n_rows = first_fit_rows([6, 2, 4, 5, 1], width=6)  # longest first: 6 | 5 1 | 4 2
    assert n_rows == 3 and list(zip(rows, offsets, strict=True)) == [(0, 0), (2, 4), (2, 0), (1, 0), (1, 5)]
    mask = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1]])  # lengths 4, 2, 2
    layout = packed_layout(mask)  # 8 slots for 18 padded
    assert (layout.rows, layout.width, layout.fill) == (2, 4, 1.0)
    assert layout.source.tolist() == [1, 2, 3, 4, 6, 7, 16, 17]  # row-major in the padded (3 x 6) layout
    assert layout.dest.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]  # the two 2s share the second row
    # Samples each longer than half the longest get a row each: no fewer slots, so they run padded.
    assert packed_layout(torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 0]])) is None


def test_packed_budget_counts_real_tokens():
    q, r = torch.tensor([2, 2, 2, 2]), torch.tensor([8, 1, 1, 1])
    padded = plan_micro_batches(q, r, max_samples=4, max_tokens=20)
    packed = plan_micro_batches(q, r, max_samples=4, max_tokens=20, packed=True)
    assert [len(m) for m in padded] == [2, 2]  # 2 rows x (2 + 8) padded
    assert [len(m) for m in packed] == [4]  # 10 + 3 + 3 + 3 real tokens


@pytest.mark.parametrize("lora", [False, True], ids=["value-head policy", "LoRA policy"])
def test_packed_scores_and_gradients_equal_the_padded_ones(lora):
    learner, tok = tiny_learner(["--model.lora.r", "4"] if lora else [])
    model = learner.policy.unwrapped
    ro = _rollout(tok.pad_token_id)
    mask = torch.cat([ro.query_mask, ro.response_mask], dim=1)
    assert packed_layout(mask) is not None  # the packed path is the one taken below
    results = []
    for packing in (False, True):
        model.packing = packing
        model.zero_grad(set_to_none=True)
        out = model(
            input_ids=ro.queries,
            attention_mask=ro.query_mask,
            responses=ro.responses,
            response_mask=ro.response_mask,
            entropy="grad",
            with_values=True,
        )
        mask = ro.response_mask
        ((out.logprobs * mask).sum() + (out.entropy * mask).sum() + (out.values * mask).sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append(([t * mask for t in (out.logprobs, out.entropy, out.values)], grads))
    (padded, padded_grads), (packed, packed_grads) = results
    for a, b in zip(padded, packed, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert padded_grads.keys() == packed_grads.keys() and padded_grads
    for n, g in padded_grads.items():
        torch.testing.assert_close(packed_grads[n], g, rtol=1e-4, atol=1e-5, msg=n)


def test_an_update_with_packing_equals_the_padded_update(monkeypatch):
    packed_forwards = []
    forward = value_head.packed_hidden
    monkeypatch.setattr(value_head, "packed_hidden", lambda *a: packed_forwards.append(1) or forward(*a))
    runs = []
    for packing in ("false", "true"):
        learner, tok = tiny_learner([*UPDATE, "--ppo.packing", packing], batch_size=6)
        assert learner.policy.unwrapped.packing == (packing == "true")
        assert learner.reference.model.packing == (packing == "true")  # the reference's passes pack too
        before = [p.detach().clone() for p in learner.policy.unwrapped.parameters()]
        stats = learner.step(_rollout(tok.pad_token_id), SCORES)
        assert max(learner.update.micro_batch_counts) > 1  # the budget split mini-batches
        after = [p.detach().clone() for p in learner.policy.unwrapped.parameters()]
        runs.append((stats, after, max(float((a - b).abs().max()) for a, b in zip(after, before, strict=True))))
    (padded, padded_params, moved), (packed, packed_params, _) = runs
    assert len(packed_forwards) >= 3  # micro-batches of the passes and of the update ran packed, not all padded
    assert moved > 1e-4
    for key in ("ppo/loss/total", "ppo/policy/approxkl", "ppo/policy/entropy", "objective/kl", "ppo/val/vpred"):
        assert packed[key] == pytest.approx(padded[key], rel=1e-4, abs=1e-6), key
    # Adam amplifies rounding on near-zero gradients: weights agree to 1 % of the largest move.
    for a, b in zip(padded_params, packed_params, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0.01 * moved)


def test_packing_is_refused_for_a_model_that_attends_across_packed_samples(monkeypatch):
    # An attention that ignores packed position ids (as in architectures or transformers versions
    # without packed-sequence masks): every token sees its whole row.
    monkeypatch.setattr(transformers.masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    with pytest.raises(ModelLoadError, match="set ppo.packing false"):
        tiny_learner(["--ppo.packing", "true"])
