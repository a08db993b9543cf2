"""The policy-loss registry (ppo with clip-higher and dual-clip, gspo, cispo), the sampler-mismatch
importance weights, the log-ratio clamp, GRPO's reward scales and DAPO's overlong punishment, each
against values computed by hand."""

import math

import pytest
import torch

from ppo_dist import algos
from ppo_dist.rewards import RewardNormalizer


def _loss(name, log_ratio, advantages, weights=None, **terms):
    """The policy term of ``ppo_loss`` for old logprobs 0 and logprobs ``log_ratio``, with its gradient."""
    logprobs = torch.tensor(log_ratio, dtype=torch.float64, requires_grad=True)
    adv = torch.tensor(advantages, dtype=torch.float64)
    w = torch.full_like(adv, 1.0 / adv.numel()) if weights is None else torch.tensor(weights, dtype=torch.float64)
    mask = torch.ones_like(adv)
    t = algos.LossTerms(policy_loss=name, **terms)
    loss, metrics = algos.POLICY_LOSSES[name](
        logprobs, torch.zeros_like(logprobs), adv, w, t, mask=mask, metric_weights=w
    )
    loss.backward()
    return loss.item(), logprobs.grad, metrics


def test_clip_higher_lets_a_positive_advantage_token_rise_further():
    up = math.log(1.25)
    loss, grad, m = _loss("ppo", [[up]], [[1.0]], cliprange=0.2)
    assert loss == pytest.approx(-1.2) and grad.item() == 0  # clipped at 1 + 0.2: no gradient
    assert m["policy/clipfrac_high"].item() == 1 and m["policy/clipfrac_low"].item() == 0
    loss, grad, m = _loss("ppo", [[up]], [[1.0]], cliprange=0.2, cliprange_high=0.28)
    assert loss == pytest.approx(-1.25) and grad.item() == pytest.approx(-1.25)  # -A * ratio, inside 1.28
    assert m["policy/clipfrac"].item() == 0
    loss, grad, m = _loss("ppo", [[math.log(0.75)]], [[-1.0]], cliprange=0.2, cliprange_high=0.28)
    assert loss == pytest.approx(0.8) and grad.item() == 0  # the lower clip stays at 1 - 0.2
    assert m["policy/clipfrac_low"].item() == 1


def test_dual_clip_bounds_a_negative_advantage_token_loss_by_c_times_a():
    big = math.log(10.0)
    loss, grad, _ = _loss("ppo", [[big]], [[-1.0]], cliprange=0.2)
    assert loss == pytest.approx(10.0) and grad.item() == pytest.approx(10.0)
    loss, grad, m = _loss("ppo", [[big]], [[-1.0]], cliprange=0.2, dual_clip=3.0)
    assert loss == pytest.approx(3.0) and grad.item() == 0 and m["policy/dual_clipfrac"].item() == 1
    loss, _, _ = _loss("ppo", [[big]], [[1.0]], cliprange=0.2, dual_clip=3.0)  # positive advantages: plain clip
    assert loss == pytest.approx(-1.2)


def test_gspo_clips_the_geometric_mean_ratio_of_the_sequence():
    # token log-ratios 0.1 and 0.3: the sequence ratio is exp(0.2) = 1.2214 for both tokens
    s = math.exp(0.2)
    loss, grad, m = _loss("gspo", [[0.1, 0.3]], [[1.0, 1.0]], cliprange=0.2)
    assert loss == pytest.approx(-1.2) and torch.equal(grad, torch.zeros(1, 2, dtype=torch.float64))
    assert m["policy/ratio"].item() == pytest.approx(s)
    loss, grad, _ = _loss("gspo", [[0.1, 0.3]], [[1.0, 1.0]], cliprange=0.2, cliprange_high=0.3)
    assert loss == pytest.approx(-s)
    # each token's gradient is sg[s] * A * weight: the sequence ratio flows through every token
    torch.testing.assert_close(grad, torch.tensor([[-s / 2, -s / 2]], dtype=torch.float64))


def test_cispo_keeps_the_gradient_of_clipped_tokens_through_a_stopped_weight():
    r = 0.5  # log ratio: ratio 1.6487, clipped to 1.28
    loss, grad, m = _loss("cispo", [[r]], [[1.0]], cliprange=0.2, cliprange_high=0.28)
    assert loss == pytest.approx(-1.28 * r) and grad.item() == pytest.approx(-1.28)
    assert m["policy/clipfrac_high"].item() == 1
    _, ppo_grad, _ = _loss("ppo", [[r]], [[1.0]], cliprange=0.2, cliprange_high=0.28)
    assert ppo_grad.item() == 0  # where PPO's clip drops the token


def test_an_extreme_log_ratio_gives_a_finite_loss_and_gradient_for_both_advantage_signs():
    for adv in (1.0, -1.0):
        loss, grad, m = _loss("ppo", [[200.0, 0.0]], [[adv, adv]])
        assert math.isfinite(loss) and torch.isfinite(grad).all(), (adv, loss, grad)
        assert m["policy/log_ratio_clamped"].item() == pytest.approx(0.5)  # one of two tokens
        assert m["policy/ratio_max"].item() == pytest.approx(math.exp(algos.LOG_RATIO_CLAMP))
    k3 = algos.kl_penalty(torch.tensor([-300.0]), torch.tensor([0.0]), "k3")
    assert torch.isfinite(k3).all() and k3.item() == pytest.approx(math.expm1(20.0) - 20.0)


def test_ratio_extremes_are_min_and_max_over_valid_tokens_only():
    lp = torch.tensor([[0.1, -0.2, 5.0]])
    w = torch.tensor([[0.5, 0.5, 0.0]])  # the last token is padding
    _, m = algos.policy_loss(lp, torch.zeros_like(lp), torch.ones_like(lp), w, 0.2)
    assert m["policy/ratio_max"].item() == pytest.approx(math.exp(0.1))
    assert m["policy/ratio_min"].item() == pytest.approx(math.exp(-0.2))


def test_engine_importance_weights_per_token_and_per_sequence():
    lp, engine, mask = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]]), torch.ones(1, 2)
    w_tok = torch.tensor([[math.exp(0.5), math.exp(-1.0)]])
    weights, ratio = algos.engine_is_weights(lp, engine, mask, "tis", cap=1.5)
    torch.testing.assert_close(ratio, w_tok)
    torch.testing.assert_close(weights, torch.tensor([[1.5, math.exp(-1.0)]]))
    weights, _ = algos.engine_is_weights(lp, engine, mask, "mis", cap=1.5)
    torch.testing.assert_close(weights, torch.tensor([[0.0, 1.0]]))
    weights, ratio = algos.engine_is_weights(lp, engine, mask, "mis", cap=1.5, level="sequence")
    torch.testing.assert_close(ratio, torch.full((1, 2), math.exp(-0.5)))  # the product of the token ratios
    torch.testing.assert_close(weights, torch.ones(1, 2))
    weights, _ = algos.engine_is_weights(lp, engine, torch.tensor([[1.0, 0.0]]), "none")
    torch.testing.assert_close(weights, torch.tensor([[1.0, 0.0]]))  # padding gets 0


def test_importance_weights_scale_only_the_policy_term():
    lp = torch.tensor([[0.0, 0.0]], requires_grad=True)
    adv, w = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.5, 0.5]])
    terms = algos.LossTerms(cliprange=0.2)
    loss, m = algos.ppo_loss(lp, lp.detach(), adv, w, terms, is_weights=torch.tensor([[2.0, 0.0]]))
    assert loss.item() == pytest.approx(-1.0)  # -(2 * 1 * 0.5 + 0 * 1 * 0.5)
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-1.0, 0.0]]))


def test_grpo_reward_scales():
    r = torch.tensor([1.0, 0.0, 2.0, 2.0])
    x = algos.AdvantageInputs(
        scores=r,
        token_rewards=torch.stack([torch.zeros(4), r], 1),
        mask=torch.ones(4, 2),
        group=torch.tensor([0, 0, 1, 1]),
        valid=torch.ones(4, dtype=torch.bool),
    )
    expected = {"group": 0.5 / math.sqrt(0.5), "batch": 0.5 / torch.tensor([1.0, 0, 2, 2]).std().item(), "none": 0.5}
    for scale, a in expected.items():
        x.scale = scale
        adv, _ = algos.compute_advantages("grpo", x)
        torch.testing.assert_close(adv[:, 0], torch.tensor([a, -a, 0.0, 0.0]), atol=1e-5, rtol=1e-5)


def test_soft_overlong_punishment_is_zero_then_linear_to_the_limit():
    lengths = torch.tensor([20, 24, 28, 32])
    out = algos.soft_overlong_penalty(lengths, max_len=32, buffer=8, penalty=2.0)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, -1.0, -2.0]))
    norm = RewardNormalizer(overlong=(32, 8, 1.0))
    shaped = norm(torch.ones(4), torch.ones(4, dtype=torch.bool), lengths)
    torch.testing.assert_close(shaped, torch.tensor([1.0, 1.0, 0.5, 0.0]))
    with pytest.raises(ValueError, match="overlong_buffer needs lengths"):
        norm(torch.ones(4), torch.ones(4, dtype=torch.bool))
