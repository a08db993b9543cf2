"""PPO math pinned against hand-computed values and loop references."""

import math
import os
import subprocess
import sys

import pytest
import torch

from ppo_dist import algos

from .launch import REPO


def gae_loop(rewards, values, mask, gamma, lam):
    """Reference: the textbook backward recursion, one sample and token at a time."""
    B, T = rewards.shape
    adv = torch.zeros(B, T)
    for b in range(B):
        n = int(mask[b].sum())
        last = 0.0
        for t in reversed(range(n)):
            next_v = values[b, t + 1].item() if t + 1 < n else 0.0
            delta = rewards[b, t].item() + gamma * next_v - values[b, t].item()
            last = delta + gamma * lam * last
            adv[b, t] = last
    return adv, (adv + values) * mask


def test_gae_matches_hand_computed_three_token_example():
    r = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    v = torch.tensor([[0.5, 0.4, 0.3, 9.0]])  # the 9.0 sits on padding and must be ignored
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = algos.gae_advantages(r, v, m, gamma=1.0, lam=0.95)
    # delta_2 = 1 - 0.3 = 0.7; delta_1 = 0.3 - 0.4 = -0.1; delta_0 = 0.4 - 0.5 = -0.1
    a2 = 0.7
    a1 = -0.1 + 0.95 * a2
    a0 = -0.1 + 0.95 * a1
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, a2, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[a0 + 0.5, a1 + 0.4, a2 + 0.3, 0.0]]))


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (0.9, 0.0), (1.0, 1.0)])
def test_vectorised_gae_equals_loop(gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, T = 6, 9
    r, v = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    lengths = torch.tensor([9, 1, 4, 7, 2, 5])
    m = (torch.arange(T) < lengths[:, None]).float()
    adv, ret = algos.gae_advantages(r, v, m, gamma, lam)
    ref_adv, ref_ret = gae_loop(r * m, v * m, m, gamma, lam)
    torch.testing.assert_close(adv, ref_adv, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ret, ref_ret, rtol=1e-5, atol=1e-5)


def test_whitening_hand_computed_and_ignores_padding():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = algos.masked_whiten(x, m)
    # mean 2, unbiased var 1 -> (x - 2) / 1
    torch.testing.assert_close(out, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    kept = algos.masked_whiten(x, m, shift_mean=False)
    torch.testing.assert_close(kept, torch.tensor([[1.0, 2.0, 3.0, 0.0]]), atol=1e-6, rtol=0)


def test_logprobs_from_logits_equals_log_softmax_gather():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 11, generator=g)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    ref = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(algos.logprobs_from_logits(logits, labels), ref)


def test_kl_estimators():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    torch.testing.assert_close(algos.kl_penalty(lp, ref, "k1"), torch.tensor([0.5, -1.0]))
    r = torch.exp(ref - lp)
    torch.testing.assert_close(algos.kl_penalty(lp, ref, "k3"), (r - 1) - torch.log(r))
    assert (algos.kl_penalty(lp, ref, "k3") >= 0).all()
    with pytest.raises(ValueError, match="unknown KL estimator"):
        algos.kl_penalty(lp, ref, "k9")


def test_token_rewards_put_score_on_last_valid_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rewards, non_score = algos.token_rewards(torch.tensor([1.0, 2.0]), kl * m, m, kl_coef=0.5)
    torch.testing.assert_close(non_score, torch.tensor([[-0.05, -0.1, -0.15], [-0.25, 0.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, -0.1, 0.85], [1.75, 0.0, 0.0]]))


def test_adaptive_kl_controller_follows_ziegler_update():
    ctl = algos.AdaptiveKLController(0.2, target=6.0, horizon=10000)
    ctl.update(current_kl=9.0, n_steps=256)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 256 / 10000))
    ctl2 = algos.AdaptiveKLController(0.2, target=6.0, horizon=10000)
    ctl2.update(current_kl=5.4, n_steps=100)  # error -0.1
    assert ctl2.value == pytest.approx(0.2 * (1 - 0.1 * 100 / 10000))
    fixed = algos.FixedKLController(0.3)
    fixed.update(100.0, 1000)
    assert fixed.value == 0.3


def _loss_inputs(seed=0, B=4, T=6):
    g = torch.Generator().manual_seed(seed)

    def t():
        return torch.randn(B, T, generator=g)

    lengths = torch.tensor([6, 3, 1, 5])[:B]
    mask = (torch.arange(T) < lengths[:, None]).float()
    return dict(
        logprobs=t() * 0.1 - 1,
        old_logprobs=t() * 0.1 - 1,
        advantages=t(),
        values=t(),
        old_values=t(),
        returns=t(),
        entropy=t().abs(),
        ref_logprobs=t() * 0.1 - 1,
    ), mask


TERMS = algos.LossTerms(cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, entropy_coef=0.01, kl_coef=0.05)


def _loss(x, weights, terms=TERMS):
    return algos.ppo_loss(
        x["logprobs"], x["old_logprobs"], x["advantages"], weights, terms,
        values=x["values"], old_values=x["old_values"], returns=x["returns"], entropy=x["entropy"],
        ref_logprobs=x["ref_logprobs"],
    )  # fmt: skip


def _counts(mask, horizon=6):
    return algos.MiniBatchCounts(mask.sum(), (mask.sum(1) > 0).sum().float(), horizon)


@pytest.mark.parametrize("agg", list(algos.LOSS_AGGREGATIONS))
def test_masked_positions_do_not_change_any_loss(agg):
    x, mask = _loss_inputs()
    weights = algos.loss_weights(agg, mask, _counts(mask))
    loss, metrics = _loss(x, weights)
    y = {k: torch.where(mask > 0, v, torch.full_like(v, 1e6)) for k, v in x.items()}
    loss2, metrics2 = _loss(y, weights)
    torch.testing.assert_close(loss, loss2)
    for k in metrics:
        torch.testing.assert_close(metrics[k], metrics2[k])


@pytest.mark.parametrize("agg", list(algos.LOSS_AGGREGATIONS))
def test_loss_split_into_micro_batches_sums_to_full_batch_loss_and_gradient(agg):
    x, mask = _loss_inputs()
    counts = _counts(mask)  # of the whole mini-batch, as the engine computes them
    lp = x["logprobs"].clone().requires_grad_(True)
    full, _ = _loss({**x, "logprobs": lp}, algos.loss_weights(agg, mask, counts))
    full.backward()
    lp2 = x["logprobs"].clone().requires_grad_(True)
    total = 0.0
    for rows in ([0, 1], [2], [3]):  # uneven split, as micro-batches of different lengths
        part = {k: v[rows] for k, v in x.items()}
        loss, _ = _loss({**part, "logprobs": lp2[rows]}, algos.loss_weights(agg, mask[rows], counts))
        loss.backward()
        total = total + loss.detach()
    torch.testing.assert_close(total, full.detach())
    torch.testing.assert_close(lp2.grad, lp.grad)


def test_loss_aggregation_weights_hand_computed():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # 3 + 1 tokens, 2 seqs
    counts = _counts(mask, horizon=4)
    w = {name: algos.loss_weights(name, mask, counts) for name in algos.LOSS_AGGREGATIONS}
    torch.testing.assert_close(w["token_mean"], mask / 4)
    torch.testing.assert_close(w["seq_mean_token_mean"], mask * torch.tensor([[1 / 6], [1 / 2], [0.0]]))
    torch.testing.assert_close(w["seq_mean_token_sum_norm"], mask / 8)
    for name in ("token_mean", "seq_mean_token_mean"):  # means: the weights of a mini-batch sum to 1
        assert w[name].sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("agg", list(algos.LOSS_AGGREGATIONS))
def test_statistics_are_averages_under_every_loss_aggregation(agg):
    # With the old policy equal to the current one every ratio is 1 and nothing is clipped: the
    # statistics summed over micro-batches must say so, whatever the aggregation's loss weights sum to.
    x, mask = _loss_inputs()
    counts = _counts(mask, horizon=16)  # a generation limit well above the lengths, as in practice
    x = {**x, "old_logprobs": x["logprobs"], "entropy": torch.full_like(x["entropy"], 2.0)}
    ratio = clipfrac = entropy = 0.0
    for rows in ([0, 1], [2], [3]):
        m = mask[rows]
        _, metrics = algos.ppo_loss(
            x["logprobs"][rows], x["old_logprobs"][rows], x["advantages"][rows], algos.loss_weights(agg, m, counts),
            TERMS, entropy=x["entropy"][rows], metric_weights=algos.metric_weights(m, counts),
        )  # fmt: skip
        ratio += metrics["policy/ratio"].item()
        clipfrac += metrics["policy/clipfrac"].item()
        entropy += metrics["policy/entropy"].item()
    assert (ratio, clipfrac, entropy) == (pytest.approx(1.0), 0.0, pytest.approx(2.0))


def test_policy_loss_hand_computed_clipping():
    lp = torch.tensor([[math.log(1.5), math.log(0.5)]])
    old = torch.zeros(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    loss, metrics = algos.policy_loss(lp, old, adv, torch.full((1, 2), 0.5), cliprange=0.2)
    # token 0: ratio 1.5, A=1: max(-1.5, -1.2) = -1.2 (clipped); token 1: ratio 0.5, A=-1: max(0.5, 0.8) = 0.8 (clipped)
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert metrics["policy/clipfrac"].item() == pytest.approx(1.0)


def test_value_loss_hand_computed_clipping():
    v, old, ret = torch.tensor([[2.0, 0.1, 2.0]]), torch.zeros(1, 3), torch.tensor([[3.0, 1.0, 1.0]])
    loss, metrics = algos.value_loss(v, old, ret, torch.full((1, 3), 1 / 3), cliprange_value=0.2)
    # token 0: unclipped (2-3)^2 = 1, clipped (0.2-3)^2 = 7.84 -> the clip acts: 7.84
    # token 1: (0.1-1)^2 = 0.81, inside the range -> 0.81; token 2: (2-1)^2 = 1 > (0.2-1)^2 = 0.64 -> 1
    assert loss.item() == pytest.approx(0.5 * (7.84 + 0.81 + 1.0) / 3)
    assert metrics["val/clipfrac"].item() == pytest.approx(1 / 3)


def test_entropy_bonus_lowers_the_loss_and_pushes_entropy_up():
    x, mask = _loss_inputs()
    weights = algos.loss_weights("token_mean", mask, _counts(mask))
    entropy = x["entropy"].clone().requires_grad_(True)
    terms = algos.LossTerms(entropy_coef=0.5)
    with_bonus, _ = algos.ppo_loss(x["logprobs"], x["old_logprobs"], x["advantages"], weights, terms, entropy=entropy)
    without, _ = algos.ppo_loss(x["logprobs"], x["old_logprobs"], x["advantages"], weights, algos.LossTerms())
    ent = (x["entropy"] * weights).sum()
    assert with_bonus.item() == pytest.approx(without.item() - 0.5 * ent.item())
    with_bonus.backward()
    torch.testing.assert_close(entropy.grad, -0.5 * weights)  # gradient descent raises the entropy


def test_kl_in_the_loss_is_differentiated_at_the_current_policy():
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]])
    terms = algos.LossTerms(kl_coef=0.1, kl_estimator="k3")
    w = torch.full((1, 2), 0.5)
    loss, metrics = algos.ppo_loss(lp, lp.detach(), torch.zeros(1, 2), w, terms, ref_logprobs=ref)
    k3 = algos.kl_penalty(lp.detach(), ref, "k3")
    assert metrics["loss/kl"].item() == pytest.approx((k3 * w).sum().item())
    loss.backward()
    # d/dlogp of k3 = 1 - exp(ref - logp); the policy term has zero advantages
    torch.testing.assert_close(lp.grad, 0.1 * w * (1 - torch.exp(ref - lp.detach())))


# ----------------------------------------------------------------------------- advantage estimators


def _grouped(scores, n, T=3, lengths=None):
    B = len(scores)
    lengths = torch.tensor(lengths or [T] * B)
    mask = (torch.arange(T) < lengths[:, None]).float()
    scores = torch.tensor(scores, dtype=torch.float32)
    rewards, _ = algos.token_rewards(scores, None, mask, 0.0)
    return algos.AdvantageInputs(
        scores=scores,
        token_rewards=rewards,
        mask=mask,
        group=torch.arange(B) // n,
        valid=torch.ones(B, dtype=torch.bool),
    )


def test_grpo_hand_computed_with_a_zero_variance_group():
    x = _grouped([1.0, 0.0, 1.0, 0.0, 2.0, 2.0, 2.0, 2.0], n=4)
    adv, _ = algos.compute_advantages("grpo", x)
    # group 0: mean 0.5, unbiased std sqrt(1/3); group 1: all equal -> 0, not NaN
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    expected = torch.tensor([a, -a, a, -a, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(adv, expected[:, None] * x.mask)
    assert torch.isfinite(adv).all()


def test_dr_grpo_and_rloo_hand_computed():
    x = _grouped([1.0, 0.0, 1.0, 0.0, 3.0, 0.0, 0.0, 0.0], n=4)
    dr, _ = algos.compute_advantages("dr_grpo", x)
    torch.testing.assert_close(dr[:, 0], torch.tensor([0.5, -0.5, 0.5, -0.5, 2.25, -0.75, -0.75, -0.75]))
    rloo, _ = algos.compute_advantages("rloo", x)
    # r_i minus the mean of the n - 1 others: 1 - 1/3, 0 - 2/3, ...; 3 - 0, 0 - 1, ...
    torch.testing.assert_close(rloo[:, 0], torch.tensor([2 / 3, -2 / 3, 2 / 3, -2 / 3, 3.0, -1.0, -1.0, -1.0]))


def test_group_statistics_skip_invalid_samples():
    x = _grouped([1.0, 5.0, 3.0, 0.0], n=4)
    x.valid = torch.tensor([True, False, True, True])  # sample 1 was dropped by the reward
    rloo, _ = algos.compute_advantages("rloo", x)
    # valid scores 1, 3, 0 (n = 3): 1 - 1.5, 3 - 0.5, 0 - 2; the invalid sample gets 0
    torch.testing.assert_close(rloo[:, 0], torch.tensor([-0.5, 0.0, 2.5, -2.0]))


def test_reinforce_pp_returns_with_kl_then_global_whitening():
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.0]])
    scores = torch.tensor([1.0, -1.0])
    rewards, _ = algos.token_rewards(scores, kl, mask, kl_coef=0.5)
    x = algos.AdvantageInputs(scores, rewards, mask, torch.arange(2), torch.ones(2, dtype=torch.bool), gamma=1.0)
    adv, ret = algos.compute_advantages("reinforce_pp", x)
    # returns are suffix sums of [-0.05, -0.1, 1 - 0.15] and [-0.2, -1 - 0.25]
    expected = torch.tensor([[0.7, 0.75, 0.85], [-1.45, -1.25, 0.0]])
    torch.testing.assert_close(ret, expected)
    torch.testing.assert_close(adv, algos.masked_whiten(expected, mask))


def test_reinforce_pp_baseline_subtracts_the_group_mean_score_first():
    x = _grouped([1.0, 3.0], n=2, lengths=[2, 3])
    adv, ret = algos.compute_advantages("reinforce_pp_baseline", x)
    # mean 2: scores -1 and +1 on the last tokens; gamma 1 -> returns [-1, -1, 0] and [1, 1, 1]
    torch.testing.assert_close(ret, torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.0, 1.0]]))
    torch.testing.assert_close(adv, algos.masked_whiten(ret, x.mask))


def test_unknown_estimator_is_named():
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo2'; known: gae, grpo"):
        algos.compute_advantages("ppo2", _grouped([1.0, 2.0], n=2))


# ----------------------------------------------------------------------------- long responses


def discounted_loop(x, discount):
    out, carry = torch.zeros_like(x), torch.zeros(x.shape[0], dtype=x.dtype)
    for t in reversed(range(x.shape[1])):
        carry = x[:, t] + discount * carry
        out[:, t] = carry
    return out


@pytest.mark.parametrize("T", [1, 7, 255, 256, 257, 1000, 4096])
def test_discounted_cumsum_equals_the_reverse_loop(T):
    g = torch.Generator().manual_seed(T)
    x = torch.randn(3, T, generator=g, dtype=torch.float64)
    for discount in (1.0, 0.95, 0.5, 0.0):
        torch.testing.assert_close(algos.discounted_cumsum(x, discount), discounted_loop(x, discount))


@pytest.mark.parametrize("T", [300, 4096])
def test_gae_equals_the_loop_on_long_ragged_responses(T):
    g = torch.Generator().manual_seed(T)
    B = 4
    r, v = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    lengths = torch.tensor([T, 1, T // 3, T - 5])
    m = (torch.arange(T) < lengths[:, None]).float()
    for gamma, lam in ((1.0, 0.95), (0.99, 0.9)):
        adv, ret = algos.gae_advantages(r, v, m, gamma, lam)
        next_v = torch.cat([(v * m)[:, 1:], torch.zeros(B, 1)], 1)
        deltas = (r + gamma * next_v - v * m) * m
        ref = discounted_loop(deltas.double(), gamma * lam).float() * m
        torch.testing.assert_close(adv, ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ret, (ref + v * m) * m, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- chunked logprobs


@pytest.mark.parametrize("entropy", ["metric", "grad"])
def test_chunked_logprobs_equal_unchunked_values_and_gradients(entropy):
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(3, 7, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 50, (3, 7), generator=g)
    logits = head(hidden)
    ref_lp = algos.logprobs_from_logits(logits, labels)
    ref_ent = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    (ref_lp.sum() + (ref_ent.sum() if entropy == "grad" else 0)).backward()
    ref_grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    lp, ent = algos.chunked_logprobs(hidden, head, labels, chunk_tokens=4, entropy=entropy)  # 21 positions: 6 chunks
    torch.testing.assert_close(lp, ref_lp)
    torch.testing.assert_close(ent, ref_ent)
    assert ent.requires_grad == (entropy == "grad")
    (lp.sum() + (ent.sum() if entropy == "grad" else 0)).backward()
    torch.testing.assert_close(hidden.grad, ref_grads[0])
    torch.testing.assert_close(head.weight.grad, ref_grads[1])


def _peak_mb(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, str(REPO / "tests" / "scripts" / "logits_memory.py"), mode],
        capture_output=True, text=True, timeout=120, check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"},
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def test_logprob_and_entropy_memory_is_bounded_by_the_chunk_not_the_sequence():
    # vocab 50k x length 512, forward + backward with the entropy metric: the unchunked path keeps
    # (512, 50k) fp32 logits, softmax and gradients alive (~100 MB each); chunks of 32 positions do not.
    chunked, full = _peak_mb("chunked"), _peak_mb("unchunked")
    assert full > 250, full
    assert chunked < 100, (chunked, full)


def test_k2_is_half_the_squared_log_ratio():
    lp, ref = torch.tensor([[-1.0, -2.0, -0.5]]), torch.tensor([[-1.5, -1.0, -0.5]])
    torch.testing.assert_close(algos.kl_penalty(lp, ref, "k2"), torch.tensor([[0.125, 0.5, 0.0]]))


def test_explained_variance_by_hand():
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the padded 99 takes no part
    # Var(returns) = 1 (unbiased, over 1, 2, 3); residuals 0, 0, 1 -> Var = 1/3: EV = 1 - 1/3.
    values = torch.tensor([[1.0, 2.0, 2.0, 0.0]])
    assert float(algos.explained_variance(values, returns, mask)) == pytest.approx(2 / 3)
    assert float(algos.explained_variance(returns, returns, mask)) == pytest.approx(1.0)  # perfect
    const = torch.full_like(returns, 2.0)  # a constant at the mean: no better than a constant
    assert float(algos.explained_variance(const, returns, mask)) == pytest.approx(0.0)
    assert torch.isnan(algos.explained_variance(values, torch.ones_like(returns), mask))  # constant returns
