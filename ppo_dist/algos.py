"""RL math on tensors. Imports torch only: no accelerate, no transformers, no I/O.

Shapes: ``B`` samples, ``T`` response tokens. ``mask`` is a float/bool ``(B, T)`` tensor that is 1
on valid response tokens (up to and including the first EOS) and 0 on padding; it is a prefix mask
(responses are right-padded).

Loss functions take per-token ``weights`` ``(B, T)`` instead of averaging themselves: the loss is
``sum(token_loss * weights)``. The weights come from :data:`LOSS_AGGREGATIONS` and are computed
from counts over the whole *global* mini-batch (all processes, all micro-batches), so splitting a
mini-batch into micro-batches, accumulation steps or processes never changes the update: the
micro-batch losses add up to the loss of the global mini-batch. Per-token statistics (ratio, clip
fractions, entropy, ...) are weighted by :func:`metric_weights`, which sum to 1 over that mini-batch.

Registries (a new variant is one registered function; config validation and ``--help`` list them):
``KL_ESTIMATORS``, ``ADVANTAGE_ESTIMATORS``, ``REWARD_SCALES``, ``LOSS_AGGREGATIONS``, ``POLICY_LOSSES``,
``ENGINE_CORRECTIONS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

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


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var(returns - values) / Var(returns)`` over valid tokens (CleanRL's value-head health
    check: 1 = perfect, 0 = no better than a constant, < 0 = worse). NaN when the returns are constant."""
    var_returns = masked_var(returns, mask)
    return torch.where(
        var_returns > 0, 1 - masked_var(returns - values, mask) / var_returns, torch.full_like(var_returns, torch.nan)
    )


# ----------------------------------------------------------------------------- logprobs


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[labels]`` as ``logit[label] - logsumexp(logits)`` (no log-softmax tensor kept).

    logits ``(..., V)``, labels ``(...)`` -> ``(...)`` in float32.
    """
    logits = logits.float()
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


LOGITS_PER_CHUNK = 1 << 24  # 64 MiB of fp32 logits


def chunk_tokens_for(vocab_size: int, chunk_tokens: int = 0) -> int:
    """Positions per chunk: ``chunk_tokens`` when > 0, else as many as keep a chunk's fp32 logits
    under :data:`LOGITS_PER_CHUNK`."""
    return chunk_tokens if chunk_tokens > 0 else max(1, LOGITS_PER_CHUNK // max(1, vocab_size))


def chunked_logprobs(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    *,
    chunk_tokens: int,
    entropy: str = "none",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logprobs of ``labels`` (and the entropy) from hidden states, a chunk of positions at a time.

    hidden ``(B, T, H)``, labels ``(B, T)``; ``head`` maps ``(n, H)`` to logits ``(n, V)``. Positions
    are flattened and processed ``chunk_tokens`` at a time (:func:`chunk_tokens_for`), so no
    ``(B, T, V)`` fp32 tensor ever exists.
    Under autograd, when there is more than one chunk, each is checkpointed: only ``hidden`` is kept
    for the backward pass, which recomputes one chunk's logits at a time (a single chunk keeps its
    logits). ``entropy``: ``"none"``; ``"metric"`` (computed without gradient, for logging);
    ``"grad"`` (differentiable, for an entropy bonus).
    Returns ``(logprobs (B, T), entropy (B, T) | None)`` in float32.
    """
    B, T, H = hidden.shape
    flat_h, flat_y = hidden.reshape(B * T, H), labels.reshape(B * T)
    n = flat_h.shape[0]

    def one_chunk(h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = head(h).float()
        logz = torch.logsumexp(logits, dim=-1)
        lp = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1) - logz
        if entropy == "none":
            return lp, lp.new_zeros(())
        probs_logits = torch.softmax(logits, -1) * logits
        ent = logz - probs_logits.sum(-1)
        return lp, (ent if entropy == "grad" else ent.detach())

    use_checkpoint = torch.is_grad_enabled() and hidden.requires_grad and n > chunk_tokens
    lps, ents = [], []
    for start in range(0, n, chunk_tokens):
        h, y = flat_h[start : start + chunk_tokens], flat_y[start : start + chunk_tokens]
        lp, ent = checkpoint(one_chunk, h, y, use_reentrant=False) if use_checkpoint else one_chunk(h, y)
        lps.append(lp)
        ents.append(ent)
    logprobs = torch.cat(lps).reshape(B, T) if lps else hidden.new_zeros(B, T, dtype=torch.float32)
    if entropy == "none":
        return logprobs, None
    return logprobs, (torch.cat(ents).reshape(B, T) if ents else torch.zeros_like(logprobs))


# ----------------------------------------------------------------------------- KL to the reference

# |log ratio| is clamped to this before exp (the PPO ratio, k3, importance weights), as verl and OpenRLHF
# do: one far-off token would otherwise overflow to an infinite ratio and a skipped step. exp(20) ~ 4.9e8.
LOG_RATIO_CLAMP = 20.0


def _kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs - ref_logprobs


def _kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    # Schulman (2020) k2 = (log r)^2 / 2: low variance, biased, >= 0.
    return 0.5 * (logprobs - ref_logprobs) ** 2


def _kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    # Schulman, "Approximating KL divergence" (2020): k3 = (r - 1) - log r, r = p_ref / p; unbiased, >= 0.
    log_ratio = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": _kl_k1,
    "k2": _kl_k2,
    "k3": _kl_k3,
}


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate between the policy and the reference, ``(B, T)``."""
    try:
        return KL_ESTIMATORS[estimator](logprobs, ref_logprobs)
    except KeyError:
        raise ValueError(f"unknown KL estimator {estimator!r}; known: {', '.join(KL_ESTIMATORS)}") from None


def token_rewards(
    scores: torch.Tensor, kl: torch.Tensor | None, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: ``-kl_coef * kl`` on every valid token, plus the score on the last one.

    Ziegler et al. 2019, eq. 2. scores ``(B,)``, kl/mask ``(B, T)`` (``kl=None``: no penalty) ->
    ``(rewards, non_score_rewards)``.
    """
    mask = mask.float()
    non_score = torch.zeros_like(mask) if kl is None else -kl_coef * kl * mask
    last = (mask.sum(1).long() - 1).clamp_min(0)
    rewards = non_score.clone()
    rewards[torch.arange(len(scores), device=scores.device), last] += scores.to(rewards.dtype)
    return rewards, non_score


def soft_overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, penalty: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13): 0 up to ``max_len - buffer`` tokens,
    then falling linearly to ``-penalty`` at ``max_len``. lengths ``(B,)`` -> ``(B,)`` added to the scores."""
    over = (lengths.to(torch.float32) - (max_len - buffer)).clamp_min(0)
    return -penalty * (over / buffer).clamp_max(1)


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


# ----------------------------------------------------------------------------- recurrences over tokens


def discounted_cumsum(x: torch.Tensor, discount: float, block: int = 256) -> torch.Tensor:
    """``y_t = sum_{k >= t} discount^(k - t) x_k`` along the last dim of ``(B, T)``, in O(B * T) memory.

    A reverse scan in blocks: inside a block of ``block`` tokens the sums are one product with a
    ``block x block`` decay matrix; across blocks a carried value ``y`` at the start of the next
    block is added with weight ``discount^(distance)``. Work O(B * T * block) on matrix units plus
    ``T / block`` small sequential steps (vs a T x T matrix, quadratic in T).
    """
    B, T = x.shape
    if T == 0:
        return x.clone()
    C = min(block, T)
    nb = -(-T // C)
    padded = torch.nn.functional.pad(x, (0, nb * C - T)).reshape(B, nb, C)
    idx = torch.arange(C, device=x.device, dtype=x.dtype)
    exponent = idx.unsqueeze(0) - idx.unsqueeze(1)  # [i, j] = j - i
    decay = torch.where(
        exponent >= 0, torch.as_tensor(discount, dtype=x.dtype) ** exponent.clamp_min(0), torch.zeros_like(exponent)
    )
    local = padded @ decay.T  # [b, n, i] = sum_{j >= i} discount^(j-i) x[b, n, j]
    carry_weight = torch.as_tensor(discount, dtype=x.dtype) ** (C - idx)  # discount^(distance to next block)
    out = torch.empty_like(local)
    carry = x.new_zeros(B)  # y at the first token of the next block
    for n in range(nb - 1, -1, -1):
        out[:, n] = local[:, n] + carry_weight * carry.unsqueeze(1)
        carry = out[:, n, 0]
    return out.reshape(B, nb * C)[:, :T]


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) over response tokens.

    rewards/values/mask ``(B, T)`` with a prefix ``mask``. The value after the last valid token is 0
    (the episode ends). ``delta_t = r_t + gamma * V_{t+1} - V_t`` and
    ``A_t = sum_k (gamma*lam)^(k-t) delta_k`` (:func:`discounted_cumsum`, O(B * T)).
    Returns ``(advantages, returns)`` with ``returns = advantages + values``, both 0 on padding.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = (rewards + gamma * next_values - values) * mask
    advantages = discounted_cumsum(deltas, gamma * lam) * mask
    return advantages, (advantages + values) * mask


# ----------------------------------------------------------------------------- advantage estimators


@dataclass
class AdvantageInputs:
    """What an estimator may use; every tensor covers the *global* batch.

    scores ``(B,)``: post-processed outcome score of each sample. token_rewards ``(B, T)``: the
    score on the last valid token, plus ``-kl_coef * kl`` on every token when the KL is placed in
    the reward. values ``(B, T)`` or None (critic-free). group ``(B,)`` long: samples of the same
    prompt share an id. valid ``(B,)`` bool: samples that take part (False: dropped by the reward).
    """

    scores: torch.Tensor
    token_rewards: torch.Tensor
    mask: torch.Tensor
    group: torch.Tensor
    valid: torch.Tensor
    values: torch.Tensor | None = None
    gamma: float = 1.0
    lam: float = 0.95
    whiten: bool = True
    eps: float = 1e-6
    scale: str = "group"  # grpo: what the reward's distance to its group mean is divided by (REWARD_SCALES)


@dataclass(frozen=True)
class AdvantageEstimator:
    fn: Callable[[AdvantageInputs], tuple[torch.Tensor, torch.Tensor]]
    needs_critic: bool
    needs_groups: bool


ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_advantage(name: str, *, needs_critic: bool = False, needs_groups: bool = False):
    """Decorator: ``fn(AdvantageInputs) -> (advantages (B, T), returns (B, T))``, 0 on padding."""

    def wrap(fn):
        ADVANTAGE_ESTIMATORS[name] = AdvantageEstimator(fn, needs_critic, needs_groups)
        return fn

    return wrap


def group_stats(x: torch.Tensor, group: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-sample ``(group mean, group std (unbiased), group size)`` of ``x`` ``(B,)`` over the valid
    members of its group. A group with one valid member has std 0."""
    ids = torch.unique(group, return_inverse=True)[1]
    n_groups = int(ids.max()) + 1 if ids.numel() else 0
    w = valid.to(x.dtype)
    count = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, ids, w)
    mean = torch.zeros_like(count).index_add_(0, ids, x * w) / count.clamp_min(1)
    sq = torch.zeros_like(count).index_add_(0, ids, (x - mean[ids]) ** 2 * w)
    std = torch.where(count > 1, (sq / (count - 1).clamp_min(1)).sqrt(), torch.zeros_like(count))
    return mean[ids], std[ids], count[ids]


def _outcome(x: AdvantageInputs) -> torch.Tensor:
    """Outcome reward of a sample: its token rewards summed (the score, minus the KL penalty when
    the KL is placed in the reward)."""
    return (x.token_rewards * x.mask).sum(1)


def _broadcast(adv: torch.Tensor, x: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    a = adv.unsqueeze(1) * x.mask * x.valid.unsqueeze(1)
    return a, a


@register_advantage("gae", needs_critic=True)
def _gae(x: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's critic-based estimator (Schulman et al. 2016), whitened over the global batch when
    ``whiten`` (legacy trl default)."""
    advantages, returns = gae_advantages(x.token_rewards, x.values, x.mask, x.gamma, x.lam)
    if x.whiten:
        advantages = masked_whiten(advantages, x.mask)
    return advantages, returns


def _batch_std(r: torch.Tensor, x: AdvantageInputs) -> torch.Tensor:
    valid = r[x.valid]
    return (valid.std() if valid.numel() > 1 else torch.zeros((), device=r.device)).expand_as(r)


# ppo.scale_rewards: the denominator of GRPO's advantage, from (outcome rewards, group std, inputs).
REWARD_SCALES: dict[str, Callable[[torch.Tensor, torch.Tensor, AdvantageInputs], torch.Tensor]] = {
    "group": lambda r, group_std, x: group_std + x.eps,  # Shao et al. 2024
    "batch": lambda r, group_std, x: _batch_std(r, x) + x.eps,  # Hu et al. 2025 (REINFORCE++), TRL's "batch"
    "none": lambda r, group_std, x: torch.ones_like(r),  # Liu et al. 2025 (Dr. GRPO)
}


@register_advantage("grpo", needs_groups=True)
def _grpo(x: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO (Shao et al. 2024, DeepSeekMath eq. 3 / sec. 4.1.2): ``(r - mean_g) / (std_g + eps)``,
    the same for every token of a response; ``x.scale`` (:data:`REWARD_SCALES`) may divide by the batch's
    std instead, or by nothing. A zero-variance group gets 0."""
    r = _outcome(x)
    mean, std, _ = group_stats(r, x.group, x.valid)
    return _broadcast((r - mean) / REWARD_SCALES[x.scale](r, std, x), x)


@register_advantage("dr_grpo", needs_groups=True)
def _dr_grpo(x: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", eq. 4): ``r - mean_g``, no
    division by the group std (which favours too easy / too hard prompts)."""
    r = _outcome(x)
    mean, _, _ = group_stats(r, x.group, x.valid)
    return _broadcast(r - mean, x)


@register_advantage("rloo", needs_groups=True)
def _rloo(x: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """RLOO (Ahmadian et al. 2024, eq. 6): ``r_i - mean_{j != i} r_j = n / (n - 1) * (r_i - mean_g)``
    with n the number of valid samples in the group."""
    r = _outcome(x)
    mean, _, n = group_stats(r, x.group, x.valid)
    return _broadcast(torch.where(n > 1, n / (n - 1).clamp_min(1) * (r - mean), torch.zeros_like(r)), x)


def _reinforce_returns(token_rewards: torch.Tensor, x: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    returns = discounted_cumsum(token_rewards * x.mask, x.gamma) * x.mask
    mask = x.mask * x.valid.unsqueeze(1)
    return masked_whiten(returns, mask), returns * mask


@register_advantage("reinforce_pp")
def _reinforce_pp(x: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu 2025, eq. 6-8): per-token returns ``G_t = sum_k gamma^(k-t) r_k`` of the token
    rewards (KL penalty per token + score at the end), whitened over the global batch."""
    return _reinforce_returns(x.token_rewards, x)


@register_advantage("reinforce_pp_baseline", needs_groups=True)
def _reinforce_pp_baseline(x: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++-baseline (Hu 2025, sec. 3.3): the group mean score is subtracted from each score
    first, then as :func:`_reinforce_pp`."""
    mean, _, _ = group_stats(x.scores, x.group, x.valid)
    last = (x.mask.sum(1).long() - 1).clamp_min(0)
    shifted = x.token_rewards.clone()
    shifted[torch.arange(len(mean), device=mean.device), last] -= mean.to(shifted.dtype)
    return _reinforce_returns(shifted, x)


def compute_advantages(name: str, x: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        estimator = ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown advantage estimator {name!r}; known: {', '.join(ADVANTAGE_ESTIMATORS)}") from None
    return estimator.fn(x)


# ----------------------------------------------------------------------------- loss aggregation


@dataclass
class MiniBatchCounts:
    """Counts over the whole global mini-batch (every process, every micro-batch)."""

    num_tokens: torch.Tensor  # valid response tokens
    num_seqs: torch.Tensor  # samples with at least one valid token
    horizon: int  # rollout.max_new_tokens


LOSS_AGGREGATIONS: dict[str, Callable[[torch.Tensor, MiniBatchCounts], torch.Tensor]] = {
    # The mean over every valid token of the mini-batch (legacy PPO, DAPO).
    "token_mean": lambda mask, c: mask / c.num_tokens.clamp_min(1),
    # Mean over sequences of each sequence's token mean (original GRPO, Shao et al. 2024 eq. 3).
    "seq_mean_token_mean": lambda mask, c: mask / (mask.sum(1, keepdim=True).clamp_min(1) * c.num_seqs.clamp_min(1)),
    # Dr. GRPO: each sequence's token sum over a constant (the generation limit), averaged over sequences.
    "seq_mean_token_sum_norm": lambda mask, c: mask / (c.horizon * c.num_seqs.clamp_min(1)),
}


def loss_weights(name: str, mask: torch.Tensor, counts: MiniBatchCounts) -> torch.Tensor:
    """Per-token weights ``(B, T)`` of one micro-batch: ``loss = sum(token_loss * weights)``."""
    return LOSS_AGGREGATIONS[name](mask.float(), counts)


def metric_weights(mask: torch.Tensor, counts: MiniBatchCounts) -> torch.Tensor:
    """Weights that sum to 1 over the global mini-batch: per-token statistics are token means under
    every loss aggregation (some aggregations' loss weights do not sum to 1, e.g. Dr. GRPO's)."""
    return loss_weights("token_mean", mask, counts)


# ----------------------------------------------------------------------------- sampler mismatch


def _no_correction(log_w: torch.Tensor, cap: float) -> torch.Tensor:
    return torch.ones_like(log_w)


def _truncated_is(log_w: torch.Tensor, cap: float) -> torch.Tensor:
    return log_w.exp().clamp(max=cap)


def _masked_is(log_w: torch.Tensor, cap: float) -> torch.Tensor:
    return (log_w.exp() <= cap).to(log_w.dtype)


# rollout.engine_correction: importance weight (from the log-weight, at most ``cap``) per token.
ENGINE_CORRECTIONS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "none": _no_correction,
    "tis": _truncated_is,  # truncated importance sampling: min(w, cap)
    "mis": _masked_is,  # masked importance sampling: the token (or sequence) leaves the loss when w > cap
}
ENGINE_CORRECTION_LEVELS = ("token", "sequence")


def engine_is_weights(
    logprobs: torch.Tensor,
    engine_logprobs: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "none",
    cap: float = 2.0,
    level: str = "token",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance weights for responses sampled by another engine's copy of the policy (vLLM).

    Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training": the
    sampler drew each token from ``pi_engine``, while the PPO ratio is taken against the trainer's own
    old policy ``pi_old`` (same weights, other kernels), so ``w = pi_old / pi_engine`` corrects the
    gradient. ``level`` ``"token"``: ``w_t = exp(logprobs_t - engine_logprobs_t)``; ``"sequence"``: the
    product over the response, the same for all its tokens. ``mode`` (:data:`ENGINE_CORRECTIONS`):
    ``"tis"`` ``min(w, cap)``, ``"mis"`` ``1[w <= cap]``, ``"none"`` 1. The log-weight is clamped to
    ``±LOG_RATIO_CLAMP`` first. All ``(B, T)``, no gradient; 0 on padding.
    Returns ``(weights, w)``: the loss multipliers and the raw importance ratios (for statistics).
    """
    mask = mask.to(logprobs.dtype)
    log_w = ((logprobs - engine_logprobs) * mask).detach()
    if level == "sequence":
        log_w = log_w.sum(1, keepdim=True).expand_as(mask)
    log_w = log_w.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return ENGINE_CORRECTIONS[mode](log_w, cap) * mask, log_w.exp() * mask


# ----------------------------------------------------------------------------- losses


@dataclass
class LossTerms:
    """The coefficients of :func:`ppo_loss`; a term whose inputs are None is left out.

    ``cliprange`` is the lower clip (``1 - cliprange``) and, unless ``cliprange_high`` is given, the
    upper one too (DAPO's clip-higher: ``cliprange_high`` 0.28 with ``cliprange`` 0.2). ``dual_clip``
    (c > 1, Ye et al. 2020) bounds a negative advantage's loss by ``-c * A``. ``policy_loss`` names the
    surrogate in :data:`POLICY_LOSSES`.
    """

    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    entropy_coef: float = 0.0
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    cliprange_high: float | None = None
    dual_clip: float | None = None
    policy_loss: str = "ppo"

    @property
    def clip_low(self) -> float:
        return self.cliprange

    @property
    def clip_high(self) -> float:
        return self.cliprange if self.cliprange_high is None else self.cliprange_high


def _clipped(ratio: torch.Tensor, advantages: torch.Tensor, low: float, high: float):
    """PPO's clipped surrogate per token, ``max(-A r, -A clip(r, 1 - low, 1 + high))``, and where the clip acts."""
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - low, 1.0 + high)
    return torch.maximum(pg_losses, pg_losses_clipped), pg_losses_clipped > pg_losses


def _clip_metrics(
    clipped: torch.Tensor, ratio: torch.Tensor, log_ratio: torch.Tensor, w: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Statistics every surrogate reports: clip fractions (all, below 1, above 1), KL estimates of the
    update, the ratio's mean, min and max over valid tokens, and the share of clamped log-ratios."""
    valid = mask > 0
    big = torch.finfo(ratio.dtype).max
    one = ratio.new_ones(())
    # The extremes over valid tokens, 1 where there is none: chosen on the device, no host read.
    r, v = (ratio, valid) if ratio.numel() else (one.reshape(1), valid.new_zeros(1))
    return {
        "policy/clipfrac": (clipped.float() * w).sum(),
        "policy/clipfrac_low": ((clipped & (ratio < 1.0)).float() * w).sum(),
        "policy/clipfrac_high": ((clipped & (ratio > 1.0)).float() * w).sum(),
        "policy/approxkl": (0.5 * log_ratio**2 * w).sum(),
        "policy/policykl": (-log_ratio * w).sum(),
        "policy/ratio": (ratio * w).sum(),
        "policy/ratio_min": torch.where(v.any(), torch.where(v, r, big).min(), one),
        "policy/ratio_max": torch.where(v.any(), torch.where(v, r, -big).max(), one),
        "policy/log_ratio_clamped": ((log_ratio.abs() > LOG_RATIO_CLAMP).float() * w).sum(),
    }


def _clamped_exp(log_ratio: torch.Tensor) -> torch.Tensor:
    return torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    cliprange: float,
    metric_weights: torch.Tensor | None = None,
    *,
    cliprange_high: float | None = None,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate objective (Schulman et al. 2017, eq. 7), aggregated by ``weights``; statistics
    averaged with ``metric_weights`` (default ``weights``).

    The ratio is clipped to ``[1 - cliprange, 1 + cliprange_high]`` (``cliprange_high`` defaults to
    ``cliprange``; DAPO, Yu et al. 2025, eq. 10); with ``dual_clip`` c the loss of a token with a
    negative advantage is at most ``-c * A`` (Ye et al. 2020, eq. 5). The log-ratio is clamped to
    ``±LOG_RATIO_CLAMP`` before ``exp``: an extreme token gets a large, finite ratio (and no gradient).
    """
    high = cliprange if cliprange_high is None else cliprange_high
    log_ratio = logprobs - old_logprobs
    ratio = _clamped_exp(log_ratio)
    clipped_losses, clipped = _clipped(ratio, advantages, cliprange, high)
    losses = clipped_losses
    if dual_clip is not None:
        losses = torch.where(advantages < 0, torch.minimum(losses, -dual_clip * advantages), losses)
    loss = (losses * weights).sum()
    w = weights if metric_weights is None else metric_weights
    with torch.no_grad():
        metrics = _clip_metrics(clipped, ratio, log_ratio.detach(), w, weights)
        if dual_clip is not None:
            metrics["policy/dual_clipfrac"] = ((losses < clipped_losses).float() * w).sum()
    return loss, metrics


PolicyLoss = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
POLICY_LOSSES: dict[str, PolicyLoss] = {}


def register_policy_loss(name: str):
    """Decorator: ``fn(logprobs, old_logprobs, advantages, weights, terms, *, mask, metric_weights)
    -> (loss, metrics)``, every tensor ``(B, T)``; ``mask`` marks the valid response tokens."""

    def wrap(fn: PolicyLoss) -> PolicyLoss:
        POLICY_LOSSES[name] = fn
        return fn

    return wrap


@register_policy_loss("ppo")
def _ppo_policy_loss(logprobs, old_logprobs, advantages, weights, terms: LossTerms, *, mask, metric_weights):
    """The clipped surrogate per token (:func:`policy_loss`)."""
    return policy_loss(
        logprobs,
        old_logprobs,
        advantages,
        weights,
        terms.clip_low,
        metric_weights,
        cliprange_high=terms.cliprange_high,
        dual_clip=terms.dual_clip,
    )


@register_policy_loss("gspo")
def _gspo_policy_loss(logprobs, old_logprobs, advantages, weights, terms: LossTerms, *, mask, metric_weights):
    """GSPO (Zheng et al. 2025, eq. 7 and its token form, eq. 13): one importance ratio per sequence,
    the geometric mean of its token ratios ``s = exp(mean_t log r_t)``, clipped to
    ``[1 - cliprange, 1 + cliprange_high]``. Each token carries ``sg[s] * pi_t / sg[pi_t]``, so the
    value is the sequence ratio and the gradient flows through every token's logprob. The paper's clip
    ranges are small (3e-4 / 4e-4): a sequence ratio moves far less than a token's."""
    mask = mask.to(logprobs.dtype)
    log_ratio = logprobs - old_logprobs
    seq_log_ratio = (log_ratio * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp_min(1)
    token_log_ratio = logprobs - logprobs.detach() + seq_log_ratio.detach()
    ratio = _clamped_exp(token_log_ratio)
    losses, clipped = _clipped(ratio, advantages, terms.clip_low, terms.clip_high)
    with torch.no_grad():
        metrics = _clip_metrics(clipped, ratio, token_log_ratio.detach(), metric_weights, mask)
    return (losses * weights).sum(), metrics


@register_policy_loss("cispo")
def _cispo_policy_loss(logprobs, old_logprobs, advantages, weights, terms: LossTerms, *, mask, metric_weights):
    """CISPO (MiniMax-M1, Chen et al. 2025, eq. 4): ``-sg[clip(r, 1 - cliprange, 1 + cliprange_high)] * A
    * log pi``. The importance weight is clipped and its gradient stopped, so every token keeps the
    gradient of its logprob (PPO's clip drops clipped tokens' gradients entirely)."""
    log_ratio = (logprobs - old_logprobs).detach()
    ratio = _clamped_exp(log_ratio)
    is_weight = torch.clamp(ratio, 1.0 - terms.clip_low, 1.0 + terms.clip_high)
    loss = (-advantages * is_weight * logprobs * weights).sum()
    with torch.no_grad():
        metrics = _clip_metrics(is_weight != ratio, ratio, log_ratio, metric_weights, mask)
    return loss, metrics


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    weights: torch.Tensor,
    cliprange_value: float,
    metric_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss ``0.5 * max((v - R)^2, (clip(v, v_old ± c) - R)^2)``, aggregated by ``weights``;
    statistics averaged with ``metric_weights`` (default ``weights``)."""
    # clamp(v, v_old - c, v_old + c) is v itself, bit for bit, inside the range (v_old + clamp(v - v_old) is
    # not): so clipfrac counts tokens where the clip acts, not rounding noise.
    values_clipped = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    vf_losses = (values - returns) ** 2
    vf_losses_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * (torch.maximum(vf_losses, vf_losses_clipped) * weights).sum()
    w = weights if metric_weights is None else metric_weights
    with torch.no_grad():
        metrics = {
            "val/clipfrac": ((vf_losses_clipped > vf_losses).float() * w).sum(),
            "val/vpred": (values * w).sum(),
            "val/error": (vf_losses * w).sum(),
        }
    return loss, metrics


def ppo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    terms: LossTerms,
    *,
    values: torch.Tensor | None = None,
    old_values: torch.Tensor | None = None,
    returns: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    metric_weights: torch.Tensor | None = None,
    is_weights: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``policy + vf_coef * value - entropy_coef * entropy + kl_coef * KL``, every input ``(B, T)``.

    The policy term is the surrogate ``terms.policy_loss`` names (:data:`POLICY_LOSSES`), its token
    losses multiplied by ``is_weights`` when given (the sampler-mismatch correction,
    :func:`engine_is_weights`). The value term needs ``values``/``old_values``/``returns`` (gae); the KL
    term ``ref_logprobs`` (``ppo.kl_placement: loss``, GRPO-style: the estimator is evaluated at the
    current policy, so it is differentiated); ``entropy`` without grad is only reported. Loss terms are
    aggregated by ``weights``, per-token statistics averaged with ``metric_weights``
    (:func:`metric_weights`; default ``weights``). ``mask`` (valid tokens) defaults to ``weights > 0``.
    Returns ``(loss, metrics)``.
    """
    mw = weights if metric_weights is None else metric_weights
    mask = (weights > 0).to(weights.dtype) if mask is None else mask
    pg_weights = weights if is_weights is None else weights * is_weights
    loss, metrics = POLICY_LOSSES[terms.policy_loss](
        logprobs, old_logprobs, advantages, pg_weights, terms, mask=mask, metric_weights=mw
    )
    metrics = {"loss/policy": loss.detach(), **metrics}
    if values is not None:
        vf, vf_metrics = value_loss(values, old_values, returns, weights, terms.cliprange_value, mw)
        loss = loss + terms.vf_coef * vf
        metrics.update({"loss/value": vf.detach(), **vf_metrics})
    if entropy is not None:
        ent = (entropy * weights).sum()
        if terms.entropy_coef:
            loss = loss - terms.entropy_coef * ent
        metrics["policy/entropy"] = (entropy.detach() * mw).sum()
    if ref_logprobs is not None:
        kl = (kl_penalty(logprobs, ref_logprobs, terms.kl_estimator) * weights).sum()
        loss = loss + terms.kl_coef * kl
        metrics["loss/kl"] = kl.detach()
    metrics["loss/total"] = loss.detach()
    return loss, metrics
