"""PPO math on tensors. Imports torch only: no accelerate, no transformers, no I/O.

Shapes: ``B`` samples, ``T`` response tokens. ``mask`` is a float/bool ``(B, T)`` tensor that is 1
on valid response tokens (up to and including the first EOS) and 0 on padding.

Loss functions return ``(loss, metrics)`` where ``loss`` is a *sum* over valid tokens divided by
``normalizer`` — the number of valid tokens of the whole global mini-batch — so that splitting a
mini-batch into micro-batches, accumulation steps or processes never changes the update: the
per-micro-batch losses add up to the token mean of the global mini-batch. Metrics are sums over
valid tokens divided by the same normalizer, so they add up the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# ----------------------------------------------------------------------------- masked statistics


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum()


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_sum((x - mean) ** 2, mask) / n.clamp_min(1)
    if unbiased:
        var = var * n / (n - 1).clamp_min(1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / std`` over valid tokens; with ``shift_mean=False`` the mean is added back.

    Call it on the *global* batch (all processes' samples) so whitening does not depend on sharding.
    Padding positions are returned as 0.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


# ----------------------------------------------------------------------------- logprobs


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[labels]`` without materialising the full log-softmax.

    logits ``(B, T, V)``, labels ``(B, T)`` -> ``(B, T)`` in float32. Computed as
    ``logit[label] - logsumexp(logits)``, row by row to bound memory on long sequences.
    """
    logits = logits.float()
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution per position: ``(B, T, V) -> (B, T)``."""
    logits = logits.float()
    logz = torch.logsumexp(logits, dim=-1)
    probs = torch.softmax(logits, dim=-1)
    return logz - (probs * logits).sum(-1)


# ----------------------------------------------------------------------------- KL penalty


def _kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs - ref_logprobs


def _kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    # Schulman, "Approximating KL divergence" (2020): k3 = (r - 1) - log r, r = p_ref / p.
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"k1": _kl_k1, "k3": _kl_k3}


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate between the sampling policy and the reference, ``(B, T)``."""
    try:
        return KL_ESTIMATORS[estimator](logprobs, ref_logprobs)
    except KeyError:
        raise ValueError(f"unknown KL estimator {estimator!r}; known: {', '.join(KL_ESTIMATORS)}") from None


def token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: ``-kl_coef * kl`` on every valid token, plus the score on the last one.

    Ziegler et al. 2019, eq. 2. scores ``(B,)``, kl/mask ``(B, T)`` -> (rewards, non_score_rewards).
    """
    mask = mask.to(kl.dtype)
    non_score = -kl_coef * kl * mask
    last = (mask.sum(1).long() - 1).clamp_min(0)
    rewards = non_score.clone()
    rewards[torch.arange(len(scores), device=scores.device), last] += scores.to(rewards.dtype)
    return rewards, non_score


class AdaptiveKLController:
    """Ziegler et al. 2019, section 2.2: ``beta <- beta * (1 + clip(KL/target - 1, ±0.2) * n / horizon)``."""

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class FixedKLController:
    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


# ----------------------------------------------------------------------------- advantages


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) over response tokens.

    rewards/values/mask ``(B, T)``; ``mask`` must be a prefix mask (right padding), as responses
    are. The value after the last valid token is 0 (the episode ends). Vectorised:
    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = sum_k (gamma*lam)^(k-t) delta_k``,
    a product with an upper-triangular decay matrix instead of a Python loop over tokens.
    Returns ``(advantages, returns)`` with ``returns = advantages + values``, both 0 on padding.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = (rewards + gamma * next_values - values) * mask
    T = deltas.shape[1]
    t = torch.arange(T, device=deltas.device, dtype=deltas.dtype)
    exponent = t.unsqueeze(0) - t.unsqueeze(1)  # [t, k] = k - t
    decay = torch.where(exponent >= 0, (gamma * lam) ** exponent.clamp_min(0), torch.zeros_like(exponent))
    advantages = (deltas @ decay.T) * mask
    returns = (advantages + values) * mask
    return advantages, returns


# ----------------------------------------------------------------------------- losses


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    normalizer: float | torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate objective (Schulman et al. 2017, eq. 7), summed over valid tokens / normalizer."""
    mask = mask.to(logprobs.dtype)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_sum(torch.maximum(pg_losses, pg_losses_clipped), mask) / normalizer
    with torch.no_grad():
        metrics = {
            "policy/clipfrac": masked_sum((pg_losses_clipped > pg_losses).float(), mask) / normalizer,
            "policy/approxkl": masked_sum(0.5 * log_ratio**2, mask) / normalizer,
            "policy/policykl": masked_sum(-log_ratio, mask) / normalizer,
            "policy/ratio": masked_sum(ratio, mask) / normalizer,
        }
    return loss, metrics


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
    normalizer: float | torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss ``0.5 * max((v - R)^2, (clip(v, v_old ± c) - R)^2)``, summed / normalizer."""
    mask = mask.to(values.dtype)
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf_losses = (values - returns) ** 2
    vf_losses_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_sum(torch.maximum(vf_losses, vf_losses_clipped), mask) / normalizer
    with torch.no_grad():
        metrics = {
            "val/clipfrac": masked_sum((vf_losses_clipped > vf_losses).float(), mask) / normalizer,
            "val/vpred": masked_sum(values, mask) / normalizer,
            "val/error": masked_sum(vf_losses, mask) / normalizer,
        }
    return loss, metrics


def ppo_loss(
    logprobs: torch.Tensor,
    values: torch.Tensor,
    entropy: torch.Tensor,
    old_logprobs: torch.Tensor,
    old_values: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    cliprange: float,
    cliprange_value: float,
    vf_coef: float,
    entropy_coef: float,
    normalizer: float | torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``policy + vf_coef * value - entropy_coef * entropy``; all (B, T); returns (loss, metrics)."""
    pg, pg_metrics = policy_loss(logprobs, old_logprobs, advantages, mask, cliprange, normalizer)
    vf, vf_metrics = value_loss(values, old_values, returns, mask, cliprange_value, normalizer)
    ent = masked_sum(entropy, mask.to(entropy.dtype)) / normalizer
    loss = pg + vf_coef * vf - entropy_coef * ent
    metrics = {
        "loss/policy": pg.detach(),
        "loss/value": vf.detach(),
        "loss/total": loss.detach(),
        "policy/entropy": ent.detach(),
        **pg_metrics,
        **vf_metrics,
    }
    return loss, metrics


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    var_ret = masked_var(returns, mask)
    if var_ret.item() == 0:
        return math.nan
    return float(1 - masked_var(returns - values, mask) / var_ret)
