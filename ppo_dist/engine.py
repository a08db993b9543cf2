"""The update engine: one PPO / critic-free policy-gradient update on any number of processes.

Roles (OpenRLHF's ``make_experience``, verl's actor / critic / ref workers), named objects the engine
asks for token scores:

* :class:`Policy` — the trained model, prepared by accelerate (DDP / DeepSpeed). When the advantage
  estimator needs a critic (``gae``), the policy carries it: a value head on the policy's last hidden
  state (legacy trl's design), so one forward gives logprobs and values. Critic-free estimators build
  no value head at all.
* :class:`Reference` — logprobs of the frozen reference: a separate model, or the LoRA policy with
  its adapter disabled (no second model in memory), or none at all when ``ppo.kl_coef`` is 0.

Data flow of :meth:`PPOEngine.step`: score the local rollout (old logprobs, values, reference) in
micro-batches -> gather the global batch (a few floats per token) -> rewards and advantages on the
global batch (identical on every process) -> PPO epochs: mini-batches drawn from the global batch by
a permutation shared by all processes, each process taking its slice, split into micro-batches ->
statistics of the global batch.

:func:`build_engine` is the one wiring: ``train.py``'s :class:`~ppo_dist.trainer.Trainer` and the
legacy :class:`~ppo_dist.compat.PPOTrainer` both build the policy, reference, optimizer and engine
through it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass

import torch
from accelerate.utils import DistributedType
from transformers import get_scheduler

from . import algos, distributed, zero
from .config import LR_SCHEDULERS, BatchPlan, Config
from .models import CausalLMWithValueHead, build_policy, build_reference_model, freeze, prepare_policy
from .rewards import RewardError, RewardNormalizer
from .rollout import Rollout, ends_with_eos, plan_micro_batches, score_in_micro_batches, split_to_count

logger = logging.getLogger(__name__)


def seed_for(*parts: int) -> int:
    """A 63-bit seed from integers (seed, step, rank, ...), stable across runs and processes."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


# ---------------------------------------------------------------------------------------- roles


class Policy:
    """The trained model (accelerate-prepared); also the critic when it has a value head."""

    def __init__(self, model, accelerator):
        self.model = model
        self.unwrapped: CausalLMWithValueHead = distributed.unwrap(accelerator, model)

    @property
    def has_critic(self) -> bool:
        return self.unwrapped.v_head is not None


class Reference:
    """Logprobs of the reference policy, for the KL penalty/loss."""

    def __init__(self, model, context=contextlib.nullcontext, kind: str = "separate model"):
        self.model, self.context, self.kind = model, context, kind

    @classmethod
    def adapter_disabled(cls, policy: Policy) -> Reference:
        """The LoRA policy with its adapter switched off: the base model, not a copy of it."""
        return cls(policy.model, policy.unwrapped.adapter_disabled, kind="adapter-disabled policy")

    def logprobs(self, rollout: Rollout, micro_batches: list[torch.Tensor]) -> torch.Tensor:
        return score_in_micro_batches(self.model, rollout, micro_batches, with_values=False, context=self.context)[0]


# ---------------------------------------------------------------------------------------- the batch


@dataclass
class RolloutBatch:
    """The global batch after gathering: every tensor is ``(B, ...)`` on every process."""

    rollout: Rollout
    logprobs: torch.Tensor | None  # None until the update fills it (on-policy shortcut)
    ref_logprobs: torch.Tensor | None  # None without a reference (ppo.kl_coef = 0)
    values: torch.Tensor | None  # None without a critic
    scores: torch.Tensor  # after post-processing (EOS penalty, scale, normalisation, clip); 0 where invalid
    raw_scores: torch.Tensor  # as the reward functions returned them; NaN where invalid
    valid: torch.Tensor  # (B,) bool: samples that take part in the update
    finished: torch.Tensor  # (B,) bool: the response ended with EOS
    group: torch.Tensor  # (B,) long: samples of the same prompt share an id

    @property
    def response_mask(self) -> torch.Tensor:
        """Valid response tokens of valid samples."""
        return self.rollout.response_mask * self.valid.unsqueeze(1)


# ---------------------------------------------------------------------------------------- the engine


class PPOEngine:
    """One update on a batch of (query, response, score) per process; see the module doc."""

    def __init__(
        self,
        cfg: Config,
        accelerator,
        policy: Policy,
        reference: Reference | None,
        optimizer,
        scheduler,
        tokenizer,
        plan: BatchPlan,
    ):
        self.cfg, self.accelerator, self.plan = cfg, accelerator, plan
        self.policy, self.reference = policy, reference
        self.optimizer, self.scheduler, self.tokenizer = optimizer, scheduler, tokenizer
        p = cfg.ppo
        self.estimator = algos.ADVANTAGE_ESTIMATORS[p.advantage_estimator]
        if self.estimator.needs_critic and not policy.has_critic:
            raise ValueError(f"ppo.advantage_estimator={p.advantage_estimator} needs a value head on the policy")
        self.kl_in_reward = reference is not None and p.kl_placement == "reward"
        self.kl_in_loss = reference is not None and p.kl_placement == "loss"
        # One optimiser step per rollout and nothing to compute before it: the update's own forward
        # gives the old logprobs (the ratio is 1 at that step), so the separate pass is skipped.
        self.on_policy_shortcut = p.on_policy_shortcut and (
            p.ppo_epochs == 1 and plan.num_mini_batches == 1 and not policy.has_critic and not self.kl_in_reward
        )
        kl_ctl = algos.AdaptiveKLController(p.kl_coef, p.kl_target, p.kl_horizon) if p.adaptive_kl else None
        self.kl_ctl = kl_ctl or algos.FixedKLController(p.kl_coef)
        self.normalizer = RewardNormalizer.from_config(cfg.reward)
        self.global_step = 0
        self.skipped_updates = 0
        self.skipped_samples = 0
        self.last_batch: RolloutBatch | None = None
        self.micro_batch_counts: list[int] = []  # this process's micro-batches per mini-batch, last step

    @property
    def model(self):
        return self.policy.model

    # ------------------------------------------------------------------ micro-batches

    def _equal_counts(self, micro: list[torch.Tensor]) -> list[torch.Tensor]:
        """Under DeepSpeed every process runs the same number of forwards/backwards: ZeRO gathers
        parameters (stage 3) and reduces gradients (stages 2-3) inside each of them."""
        if not zero.zero_stage(self.accelerator):
            return micro
        local = torch.tensor([float(len(micro))], device=self.accelerator.device)
        count = int(distributed.reduce_max(self.accelerator, local).item())
        return split_to_count(micro, count)

    def _forward_micro_batches(self, rollout: Rollout) -> list[torch.Tensor]:
        r = self.cfg.rollout
        q_len, r_len = rollout.lengths()
        micro = plan_micro_batches(q_len, r_len, max_samples=r.forward_batch_size, max_tokens=r.forward_tokens)
        return self._equal_counts(micro)

    def _update_micro_batches(self, batch: RolloutBatch, local_idx: torch.Tensor) -> list[torch.Tensor]:
        """This process's share of a mini-batch as micro-batches of global sample indices."""
        q_len = batch.rollout.query_mask[local_idx].sum(1).cpu()
        r_len = batch.rollout.response_mask[local_idx].sum(1).cpu()  # forwarded widths, skipped samples too
        micro = plan_micro_batches(
            q_len, r_len, max_samples=self.plan.local_micro_batch_size, max_tokens=self.cfg.ppo.micro_batch_tokens
        )
        return [local_idx[m] for m in self._equal_counts(micro)]

    # ------------------------------------------------------------------ 3. old logprobs, values, reference

    @torch.no_grad()
    def score_rollout(self, rollout: Rollout, scores: torch.Tensor, valid: torch.Tensor | None = None) -> RolloutBatch:
        """Logprob/value passes on this process's samples, then gather the global batch.

        Scores are post-processed on the gathered batch (so running statistics are the same on any
        number of processes); invalid samples (``reward.on_invalid: skip_sample``) get an empty
        response mask and take no part in the update.
        """
        acc = self.accelerator
        micro = self._forward_micro_batches(rollout)
        logprobs = values = ref_logprobs = None
        self.policy.model.eval()
        with acc.autocast():
            if not self.on_policy_shortcut:
                logprobs, values = score_in_micro_batches(
                    self.policy.model, rollout, micro, with_values=self.policy.has_critic
                )
            if self.reference is not None:
                ref_logprobs = self.reference.logprobs(rollout, micro)
        pad = self.tokenizer.pad_token_id

        def gather(t, value=0, first=False):
            return None if t is None else distributed.gather_padded(acc, t, value, first)

        valid = torch.ones_like(scores, dtype=torch.bool) if valid is None else valid.bool()
        raw = distributed.gather_1d(acc, scores.to(acc.device).float())
        valid = distributed.gather_1d(acc, valid.to(acc.device))
        finished = ends_with_eos(rollout.responses, rollout.response_mask, self.tokenizer.eos_token_id)
        finished = distributed.gather_1d(acc, finished.to(acc.device))
        processed = torch.where(valid, self.normalizer(raw, finished), torch.zeros_like(raw))
        self.skipped_samples += int((~valid).sum())
        gathered = Rollout(
            gather(rollout.queries, pad, True),
            gather(rollout.query_mask, 0, True),
            gather(rollout.responses, pad),
            gather(rollout.response_mask),
        )
        # Process r holds global samples [r * local, (r + 1) * local): the gathered order is global.
        group = torch.arange(len(raw), device=raw.device) // self.plan.n_samples_per_prompt
        return RolloutBatch(
            rollout=gathered,
            logprobs=gather(logprobs),
            ref_logprobs=gather(ref_logprobs),
            values=gather(values),
            scores=processed,
            raw_scores=raw,
            valid=valid,
            finished=finished,
            group=group,
        )

    # ------------------------------------------------------------------ 4. rewards and advantages

    def kl(self, batch: RolloutBatch) -> torch.Tensor | None:
        """Per-token KL of the sampling policy to the reference (``ppo.kl_estimator``), 0 on padding."""
        if batch.ref_logprobs is None or batch.logprobs is None:
            return None
        return algos.kl_penalty(batch.logprobs, batch.ref_logprobs, self.cfg.ppo.kl_estimator) * batch.response_mask

    def advantages(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(advantages, returns, non_score_rewards)``, each ``(B, T)``, on the global batch."""
        p = self.cfg.ppo
        mask = batch.response_mask.float()
        rewards, non_score = algos.token_rewards(
            batch.scores, self.kl(batch) if self.kl_in_reward else None, mask, self.kl_ctl.value
        )
        if p.whiten_rewards:
            rewards = algos.masked_whiten(rewards, mask, shift_mean=False)
        inputs = algos.AdvantageInputs(
            scores=batch.scores,
            token_rewards=rewards,
            mask=mask,
            group=batch.group,
            valid=batch.valid,
            values=batch.values,
            gamma=p.gamma,
            lam=p.lam,
            whiten=p.whiten_advantages,
        )
        advantages, returns = algos.compute_advantages(p.advantage_estimator, inputs)
        return advantages.detach(), returns.detach(), non_score

    # ------------------------------------------------------------------ 5. the update

    def optimize(self, batch: RolloutBatch, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, torch.Tensor]:
        acc, p, plan = self.accelerator, self.cfg.ppo, self.plan
        rank = acc.process_index
        mask = batch.response_mask
        sums: dict[str, torch.Tensor] = {}
        fresh_logprobs: dict[int, torch.Tensor] = {}
        self.micro_batch_counts = []
        self.policy.model.train()
        for epoch in range(p.ppo_epochs):
            if p.shuffle:
                gen = torch.Generator().manual_seed(seed_for(self.cfg.train.seed, self.global_step, epoch))
                order = torch.randperm(plan.batch_size, generator=gen)
            else:
                order = torch.arange(plan.batch_size)
            for mb_start in range(0, plan.batch_size, plan.mini_batch_size):
                mb_idx = order[mb_start : mb_start + plan.mini_batch_size].to(mask.device)
                mb_mask = mask[mb_idx]
                # Counts of the whole global mini-batch: every micro-batch's loss is weighted by them.
                counts = algos.MiniBatchCounts(
                    num_tokens=mb_mask.sum().float(),
                    num_seqs=(mb_mask.sum(1) > 0).sum().float(),
                    horizon=self.cfg.rollout.max_new_tokens,
                )
                local_idx = mb_idx[rank * plan.local_mini_batch_size : (rank + 1) * plan.local_mini_batch_size]
                micro = self._update_micro_batches(batch, local_idx)
                self.micro_batch_counts.append(len(micro))
                # accelerate syncs gradients (and DeepSpeed steps) at the last micro-batch of this process.
                acc.gradient_accumulation_steps = len(micro)
                acc.step = 0
                for idx in micro:
                    metrics, logprobs = self._micro_step(batch, advantages, returns, idx, counts, len(micro))
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + v
                    if self.on_policy_shortcut:
                        fresh_logprobs.update({int(i): lp for i, lp in zip(idx.tolist(), logprobs, strict=True)})
        if self.on_policy_shortcut:
            batch.logprobs = self._gather_fresh_logprobs(batch, fresh_logprobs)
        keys = sorted(sums)
        stacked = distributed.reduce_sum(acc, torch.stack([sums[k] for k in keys]))
        return dict(zip(keys, stacked / (p.ppo_epochs * plan.num_mini_batches), strict=True))

    def _micro_step(self, batch: RolloutBatch, advantages, returns, idx, counts, num_micro: int):
        """Forward/backward on one micro-batch; optimiser step when this process's last micro-batch
        of the mini-batch is done.

        The loss is ``sum(token_loss * weights)`` with weights from the global mini-batch counts, so
        the micro-batch losses of all processes add up to the mini-batch loss. accelerate divides
        each loss by the accumulation steps (DeepSpeed: by its configured ones) and DDP/ZeRO average
        gradients over processes; multiplying by both makes the gradient exactly that sum.
        """
        acc, p = self.accelerator, self.cfg.ppo
        part = batch.rollout.select(idx)
        critic = self.policy.has_critic
        with acc.accumulate(self.policy.model):
            with acc.autocast():
                out = part.score(self.policy.model, entropy="grad" if p.entropy_coef else "metric", with_values=critic)
            T = out.logprobs.shape[1]
            mask = batch.response_mask[idx, :T]
            weights = algos.loss_weights(p.loss_agg, mask, counts)
            old_logprobs = out.logprobs.detach() if self.on_policy_shortcut else batch.logprobs[idx, :T]
            terms = algos.LossTerms(
                cliprange=p.cliprange,
                cliprange_value=p.cliprange_value,
                vf_coef=p.vf_coef,
                entropy_coef=p.entropy_coef,
                kl_coef=self.kl_ctl.value,
                kl_estimator=p.kl_estimator,
            )
            loss, metrics = algos.ppo_loss(
                out.logprobs,
                old_logprobs,
                advantages[idx, :T],
                weights,
                terms,
                values=out.values if critic else None,
                old_values=batch.values[idx, :T] if critic else None,
                returns=returns[idx, :T] if critic else None,
                entropy=out.entropy,
                ref_logprobs=batch.ref_logprobs[idx, :T] if self.kl_in_loss else None,
                metric_weights=algos.metric_weights(mask, counts),
            )
            per_backend = self.plan.gradient_accumulation_steps if zero.zero_stage(acc) else num_micro
            acc.backward(loss * (self.plan.world_size * per_backend))
            if acc.sync_gradients:
                self._optimizer_step()
        return metrics, out.logprobs.detach()

    def _gather_fresh_logprobs(self, batch: RolloutBatch, fresh: dict[int, torch.Tensor]) -> torch.Tensor:
        """On-policy shortcut: the logprobs each process computed in the update, in global order."""
        acc = self.accelerator
        B, T = batch.rollout.responses.shape
        idx = torch.tensor(sorted(fresh), dtype=torch.long, device=acc.device)
        local = torch.zeros(len(idx), T, device=acc.device)
        for row, i in enumerate(idx.tolist()):
            local[row, : len(fresh[i])] = fresh[i].float()
        all_idx = distributed.gather_1d(acc, idx)
        all_lp = distributed.gather_padded(acc, local)
        out = torch.zeros(B, T, device=acc.device)
        out[all_idx] = all_lp[:, :T]
        return out * batch.response_mask

    def _optimizer_step(self) -> None:
        acc, max_norm = self.accelerator, self.cfg.optim.max_grad_norm
        params = self.policy.model.parameters()
        if acc.scaler is not None:
            # fp16 loss scaling (GPU, DDP): overflowing gradients are routine while the scale settles. The
            # GradScaler skips such a step and lowers the scale; it must see every step (a step without its
            # update() breaks the next unscale_), so it decides here, not the norm. Not a bad step.
            if max_norm:
                acc.clip_grad_norm_(params, max_norm)
            self.optimizer.step()
            if self.optimizer.step_was_skipped:
                logger.info(
                    "fp16 gradient overflow at step %d: update skipped, loss scale lowered", self.global_step + 1
                )
            else:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            return
        if max_norm or acc.distributed_type == DistributedType.DEEPSPEED:
            grad_norm = acc.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
        else:  # no clipping: the norm only for the finite check (clip_grad_norm_ would also scale every grad by 1)
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        # Gradients are already all-reduced, so every process sees the same norm and skips together.
        finite = grad_norm is None or bool(torch.isfinite(torch.as_tensor(grad_norm)).item())
        if not finite and zero.zero_stage(acc):
            # The DeepSpeed engine has already stepped inside backward(): nothing left to skip.
            raise FloatingPointError(
                f"non-finite gradient norm at step {self.global_step + 1} under DeepSpeed; "
                "the update was applied, resume from the last checkpoint with a lower optim.lr"
            )
        if not finite:
            self.skipped_updates += 1
            logger.warning("non-finite gradient norm at step %d: optimiser update skipped", self.global_step + 1)
        else:
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ the whole update

    def step(self, rollout: Rollout, scores: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, float]:
        """One update from this process's rollout and scores; returns global statistics."""
        t0 = time.perf_counter()
        batch = self.score_rollout(rollout, scores, valid)
        t1 = time.perf_counter()
        advantages, returns, non_score = self.advantages(batch)
        t2 = time.perf_counter()
        train_metrics = self.optimize(batch, advantages, returns)
        t3 = time.perf_counter()
        self.last_batch = batch  # the gathered batch, for histograms
        stats = self._stats(batch, non_score, advantages, returns, train_metrics)
        stats.update({"time/logprobs": t1 - t0, "time/advantages": t2 - t1, "time/update": t3 - t2})
        kl = stats.get("objective/kl")
        if kl is not None and math.isfinite(kl):  # a bad step must not poison the KL coefficient
            self.kl_ctl.update(kl, self.plan.batch_size)
        self.global_step += 1
        return stats

    def _stats(self, batch: RolloutBatch, non_score, advantages, returns, train_metrics) -> dict[str, float]:
        mask = batch.response_mask.float()
        q_len = batch.rollout.query_mask.sum(1).float()
        r_len = batch.rollout.response_mask.sum(1).float()
        s = batch.raw_scores[batch.valid]
        if s.numel() == 0:
            raise RewardError(
                f"every sample of step {self.global_step + 1} was invalid (reward.on_invalid=skip_sample)"
            )
        zero_ = torch.zeros((), device=s.device)
        values = {
            "env/reward_mean": s.mean(),
            "env/reward_std": s.std() if s.numel() > 1 else zero_,
            "env/reward_min": s.min(),
            "env/reward_max": s.max(),
            "env/score_mean": batch.scores[batch.valid].mean(),
            "objective/entropy": (-batch.logprobs * mask).sum(1)[batch.valid].mean(),
            "ppo/mean_scores": batch.scores[batch.valid].mean(),
            "ppo/returns/mean": algos.masked_mean(returns, mask),
            "ppo/returns/var": algos.masked_var(returns, mask),
            "ppo/advantages/mean": algos.masked_mean(advantages, mask),
            "tokens/queries_len_mean": q_len.mean(),
            "tokens/responses_len_mean": r_len.mean(),
            "tokens/responses_finished_frac": batch.finished.float().mean(),
            **{f"ppo/{k}": v for k, v in train_metrics.items()},
        }
        kl = self.kl(batch)
        if kl is not None:
            values["objective/kl"] = kl.sum(1)[batch.valid].mean()
        if self.kl_in_reward:
            values["ppo/mean_non_score_reward"] = non_score.sum(1)[batch.valid].mean()
        if self.policy.has_critic:
            values["ppo/val/explained_var"] = algos.explained_variance(batch.values, returns, mask)
        if self.plan.n_samples_per_prompt > 1:
            _, std, count = algos.group_stats(batch.raw_scores.nan_to_num(), batch.group, batch.valid)
            first = torch.ones_like(batch.group, dtype=torch.bool)
            first[1:] = batch.group[1:] != batch.group[:-1]  # one entry per group (groups are contiguous)
            groups = first & (count > 1)
            values["env/group_reward_std_mean"] = std[groups].mean() if groups.any() else zero_
            values["env/zero_std_group_frac"] = (std[groups] == 0).float().mean() if groups.any() else zero_
        keys = list(values)
        floats = torch.stack([values[k].float().reshape(()) for k in keys]).tolist()  # one host sync
        stats = dict(zip(keys, floats, strict=True))
        if self.reference is not None:
            stats["objective/kl_coef"] = self.kl_ctl.value
        stats["ppo/learning_rate"] = self.scheduler.get_last_lr()[0]
        stats["ppo/skipped_updates"] = float(self.skipped_updates)
        stats["env/skipped_samples"] = float(self.skipped_samples)
        return stats

    def save_pretrained(self, path, tokenizer=None) -> None:
        """The policy as a normal HF directory (LoRA: merged, plus ``adapter/``), ``value_head.pt``
        beside it when there is a critic, and the tokenizer; written by the main process."""
        acc = self.accelerator
        acc.wait_for_everyone()
        state = distributed.full_state_dict(acc, self.policy.model)
        if acc.is_main_process:
            self.policy.unwrapped.save_pretrained(path, state_dict=state)
            if tokenizer is not None:
                tokenizer.save_pretrained(path)
        acc.wait_for_everyone()

    def state_dict(self) -> dict:
        return {
            "global_step": self.global_step,
            "kl_ctl": self.kl_ctl.state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "skipped_updates": self.skipped_updates,
            "skipped_samples": self.skipped_samples,
        }

    def load_state_dict(self, state: dict) -> None:
        self.global_step = int(state["global_step"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.normalizer.load_state_dict(state["normalizer"])
        self.skipped_updates = int(state["skipped_updates"])
        self.skipped_samples = int(state["skipped_samples"])


# ---------------------------------------------------------------------------------------- wiring


def build_optimizer(cfg: Config, model, plan: BatchPlan):
    """AdamW over the trainable parameters (LoRA: adapters and value head only) and its schedule."""
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel (CPU and CUDA) is ~3x faster than the per-parameter loop on small models.
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    optimizer = torch.optim.AdamW(
        params, lr=o.lr, betas=(o.adam_beta1, o.adam_beta2), eps=o.adam_eps, weight_decay=o.weight_decay, fused=fused
    )
    total = cfg.train.total_steps * cfg.ppo.ppo_epochs * plan.num_mini_batches
    scheduler = get_scheduler(
        LR_SCHEDULERS[o.lr_scheduler], optimizer, num_warmup_steps=o.warmup_steps, num_training_steps=total
    )
    return optimizer, scheduler


def build_engine(
    cfg: Config,
    accelerator,
    tokenizer,
    plan: BatchPlan,
    *,
    policy: CausalLMWithValueHead | None = None,
    reference: CausalLMWithValueHead | None = None,
    optimizer=None,
    scheduler=None,
) -> PPOEngine:
    """Policy, reference, optimizer and engine, prepared for the launched processes.

    ``policy`` / ``reference`` / ``optimizer`` / ``scheduler`` are the legacy API's user-given
    objects; anything not given is built from ``cfg`` (seed first for reproducible heads). The
    reference: none when ``ppo.kl_coef`` is 0; the given one; else ``model.ref_name_or_path``;
    else, for a LoRA policy, the policy with its adapter disabled; else a frozen copy of the policy.
    """
    needs_critic = algos.ADVANTAGE_ESTIMATORS[cfg.ppo.advantage_estimator].needs_critic
    if policy is None:
        policy = build_policy(cfg.model, tokenizer, value_head=needs_critic)
    else:
        prepare_policy(policy, cfg.model, tokenizer)
    ref_model = None
    if cfg.ppo.kl_coef > 0:
        ref_model = freeze(reference) if reference is not None else build_reference_model(cfg.model, policy, tokenizer)
    if optimizer is None:
        optimizer, default_scheduler = build_optimizer(cfg, policy, plan)
        scheduler = scheduler or default_scheduler
    elif scheduler is None:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    model, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)
    policy_role = Policy(model, accelerator)
    # Under ZeRO-3 a model loaded by from_pretrained is partitioned already; prepared, its hooks gather it.
    policy_role.unwrapped.check_scoring_matches_logits()
    if cfg.ppo.kl_coef == 0:
        reference_role = None
    elif ref_model is None:
        reference_role = Reference.adapter_disabled(policy_role)
    else:
        reference_role = Reference(zero.prepare_reference(accelerator, ref_model))
    if reference_role is not None:
        logger.info("reference: %s", reference_role.kind)
    return PPOEngine(cfg, accelerator, policy_role, reference_role, optimizer, scheduler, tokenizer, plan)
