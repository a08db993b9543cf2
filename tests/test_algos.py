"""PPO math pinned against hand-computed values and loop references."""

import math

import pytest
import torch

from ppo_dist import algos


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
    ent_ref = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(algos.entropy_from_logits(logits), ent_ref)


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
    t = lambda: torch.randn(B, T, generator=g)  # noqa: E731
    lengths = torch.tensor([6, 3, 1, 5])[:B]
    mask = (torch.arange(T) < lengths[:, None]).float()
    return dict(
        logprobs=t() * 0.1 - 1,
        values=t(),
        entropy=t().abs(),
        old_logprobs=t() * 0.1 - 1,
        old_values=t(),
        advantages=t(),
        returns=t(),
        mask=mask,
    )


KW = dict(cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, entropy_coef=0.01)


def test_masked_positions_do_not_change_any_loss():
    x = _loss_inputs()
    n = x["mask"].sum()
    loss, metrics = algos.ppo_loss(**x, **KW, normalizer=n)
    y = {k: (v.clone() if k != "mask" else v) for k, v in x.items()}
    for k in ("logprobs", "values", "entropy", "old_logprobs", "old_values", "advantages", "returns"):
        y[k] = torch.where(x["mask"] > 0, y[k], torch.full_like(y[k], 1e6))
    loss2, metrics2 = algos.ppo_loss(**y, **KW, normalizer=n)
    torch.testing.assert_close(loss, loss2)
    for k in metrics:
        torch.testing.assert_close(metrics[k], metrics2[k])


def test_loss_split_into_micro_batches_sums_to_full_batch_loss_and_gradient():
    x = _loss_inputs()
    n = x["mask"].sum()
    lp = x["logprobs"].clone().requires_grad_(True)
    full, _ = algos.ppo_loss(**{**x, "logprobs": lp}, **KW, normalizer=n)
    full.backward()
    lp2 = x["logprobs"].clone().requires_grad_(True)
    total = 0.0
    for rows in ([0, 1], [2], [3]):  # uneven split, as micro-batches of different lengths
        part = {k: v[rows] for k, v in x.items()}
        loss, _ = algos.ppo_loss(**{**part, "logprobs": lp2[rows]}, **KW, normalizer=n)
        loss.backward()
        total = total + loss.detach()
    torch.testing.assert_close(total, full.detach())
    torch.testing.assert_close(lp2.grad, lp.grad)


def test_policy_loss_hand_computed_clipping():
    lp = torch.tensor([[math.log(1.5), math.log(0.5)]])
    old = torch.zeros(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    m = torch.ones(1, 2)
    loss, metrics = algos.policy_loss(lp, old, adv, m, cliprange=0.2, normalizer=2.0)
    # token 0: ratio 1.5, A=1: max(-1.5, -1.2) = -1.2 (clipped); token 1: ratio 0.5, A=-1: max(0.5, 0.8) = 0.8 (clipped)
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert metrics["policy/clipfrac"].item() == pytest.approx(1.0)


def test_value_loss_hand_computed_clipping():
    v, old, ret, m = (
        torch.tensor([[2.0, 0.1]]),
        torch.tensor([[0.0, 0.0]]),
        torch.tensor([[1.0, 1.0]]),
        torch.ones(1, 2),
    )
    loss, metrics = algos.value_loss(v, old, ret, m, cliprange_value=0.2, normalizer=2.0)
    # token 0: unclipped (2-1)^2=1, clipped (0.2-1)^2=0.64 -> 1; token 1: (0.1-1)^2=0.81, clip no-op -> 0.81
    assert loss.item() == pytest.approx(0.5 * (1.0 + 0.81) / 2)
    assert metrics["val/clipfrac"].item() == pytest.approx(0.0)
