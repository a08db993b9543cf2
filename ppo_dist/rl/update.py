"""The update: the PPO epochs over one step's :class:`~ppo_dist.rl.experience.Experience`.

Mini-batches are drawn from the global batch by a permutation shared by all processes (seeded by
the step and the epoch); each process takes its slice and splits it into micro-batches (a fixed
count or a token budget). Every micro-batch's loss is ``sum(token_loss * weights)`` with weights
from the counts of the whole global mini-batch (:func:`ppo_dist.algos.loss_weights`), so the split
over micro-batches, accumulation steps and processes never changes the update. Statistics are the
means over the optimiser steps, reduced over processes once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from accelerate.utils import DistributedType

from .. import algos
from ..config import BatchPlan, Config
from ..runtime import distributed, zero
from .batching import equal_counts_all, plan_micro_batches, planned_widths
from .experience import Experience
from .roles import Policy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MicroBatch:
    """Global sample indices of one forward/backward, and their longest query and response."""

    idx: torch.Tensor
    widths: tuple[int, int]


class PPOUpdate:
    """The optimiser, its schedule and the PPO epochs; see the module doc."""

    def __init__(self, cfg: Config, accelerator, policy: Policy, optimizer, scheduler, plan: BatchPlan):
        self.cfg, self.accelerator, self.plan = cfg, accelerator, plan
        self.policy, self.optimizer, self.scheduler = policy, optimizer, scheduler
        self.global_step = 0  # PPO steps done
        self.skipped_updates = 0  # optimiser steps skipped for a non-finite gradient norm
        self.micro_batch_counts: list[int] = []  # this process's micro-batches per mini-batch, last step
        # Where the fused AdamW can skip a non-finite update itself (see _optimizer_step), the decision
        # stays on the device: with a constant schedule (a skipped step cannot shift the learning rate),
        # no fp16 loss scaler (it decides skips itself) and no DeepSpeed (its engine steps in backward).
        self._inner_optimizer = getattr(optimizer, "optimizer", optimizer)  # under accelerate's wrapper
        self._skip_on_device = bool(
            accelerator.distributed_type != DistributedType.DEEPSPEED
            and getattr(self._inner_optimizer, "defaults", {}).get("fused")
            and accelerator.scaler is None
            and cfg.optim.lr_scheduler == "constant"
            and cfg.optim.warmup_steps == 0
        )
        self._skipped_on_device = torch.zeros((), device=accelerator.device)  # this PPO step's skips

    def step(self, exp: Experience) -> dict[str, torch.Tensor | float]:
        """One PPO update on ``exp`` (filling ``exp.logprobs`` under the on-policy shortcut); returns
        the loss statistics (``ppo/*``, 0-d tensors) and the schedule's state (floats)."""
        t0 = time.perf_counter()
        metrics: dict[str, torch.Tensor | float] = {f"ppo/{k}": v for k, v in self._optimize(exp).items()}
        if self._skip_on_device:  # the step's one host read of its skipped updates
            skipped = int(self._skipped_on_device.item())
            self._skipped_on_device.zero_()
            if skipped:
                self.skipped_updates += skipped
                logger.warning(
                    "non-finite gradient norm at step %d: %d optimiser update(s) skipped", self.global_step + 1, skipped
                )
        metrics["ppo/learning_rate"] = self.scheduler.get_last_lr()[0]
        metrics["ppo/skipped_updates"] = float(self.skipped_updates)
        metrics["time/update"] = time.perf_counter() - t0
        self.global_step += 1
        return metrics

    def _schedule(self, exp: Experience) -> list[tuple[torch.Tensor, list[MicroBatch]]]:
        """Every mini-batch of the step (global sample indices, drawn by a permutation shared by all
        processes) with this process's share of it as micro-batches (a fixed count or a token budget).

        Planned before the first forward: the sample lengths come to the host once per step and, under
        DeepSpeed, the processes agree on every mini-batch's micro-batch count in one all-reduce, so
        the PPO epochs themselves read nothing back."""
        acc, p, plan = self.accelerator, self.cfg.ppo, self.plan
        rank, per_rank = acc.process_index, plan.local_mini_batch_size
        rollout = exp.rollout  # forwarded widths, skipped samples too
        q_len, r_len = torch.stack(rollout.lengths()).cpu()
        mini_batches, micro = [], []
        for epoch in range(p.ppo_epochs):
            if p.shuffle:
                gen = torch.Generator().manual_seed(distributed.seed_for(self.cfg.train.seed, exp.step - 1, epoch))
                order = torch.randperm(plan.batch_size, generator=gen)
            else:
                order = torch.arange(plan.batch_size)
            for mb_start in range(0, plan.batch_size, plan.mini_batch_size):
                mb_idx = order[mb_start : mb_start + plan.mini_batch_size]
                local_idx = mb_idx[rank * per_rank : (rank + 1) * per_rank]
                parts = plan_micro_batches(
                    q_len[local_idx],
                    r_len[local_idx],
                    max_samples=plan.local_micro_batch_size,
                    max_tokens=p.micro_batch_tokens,
                    packed=p.packing,
                )
                mini_batches.append(mb_idx)
                micro.append([local_idx[m] for m in parts])
        device = exp.loss_mask.device

        return [
            (mb.to(device), [MicroBatch(m.to(device), planned_widths(q_len, r_len, m)) for m in parts])
            for mb, parts in zip(mini_batches, equal_counts_all(acc, micro), strict=True)
        ]

    def _optimize(self, exp: Experience) -> dict[str, torch.Tensor]:
        """The PPO epochs; returns the mean of every loss statistic over the optimiser steps."""
        acc, p, plan = self.accelerator, self.cfg.ppo, self.plan
        shortcut = exp.logprobs is None  # on-policy shortcut: the first forward gives the old logprobs
        mask = exp.loss_mask
        sums: dict[str, torch.Tensor] = {}  # token-weighted means (weights sum to 1 per mini-batch)
        extremes: dict[str, torch.Tensor] = {}  # "*_max" as is, "*_min" negated: reduced by max
        fresh_logprobs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (indices, logprobs) per micro-batch
        schedule = self._schedule(exp)
        self.micro_batch_counts = [len(micro) for _, micro in schedule]
        self.policy.model.train()
        for mb_idx, micro in schedule:
            mb_mask = mask[mb_idx]
            # Counts of the whole global mini-batch: every micro-batch's loss is weighted by them.
            counts = algos.MiniBatchCounts(
                num_tokens=mb_mask.sum().float(),
                num_seqs=(mb_mask.sum(1) > 0).sum().float(),
                horizon=self.cfg.rollout.max_new_tokens,
            )
            # accelerate syncs gradients (and DeepSpeed steps) at the last micro-batch of this process.
            acc.gradient_accumulation_steps = len(micro)
            acc.step = 0
            for part in micro:
                metrics, logprobs = self._micro_step(exp, part, counts, len(micro), shortcut)
                for k, v in metrics.items():
                    if k.endswith(("_max", "_min")):
                        v = v if k.endswith("_max") else -v
                        extremes[k] = torch.maximum(extremes[k], v) if k in extremes else v
                    else:
                        sums[k] = sums.get(k, 0.0) + v
                if shortcut:
                    fresh_logprobs.append((part.idx, logprobs))
        if shortcut:
            exp.logprobs = self._gather_fresh_logprobs(exp, fresh_logprobs)
        keys = sorted(sums)
        stacked = distributed.reduce_sum(acc, torch.stack([sums[k] for k in keys]))
        out = dict(zip(keys, stacked / (p.ppo_epochs * plan.num_mini_batches), strict=True))
        if extremes:
            names = sorted(extremes)
            reduced = distributed.reduce_max(acc, torch.stack([extremes[k] for k in names]))
            out.update({k: v if k.endswith("_max") else -v for k, v in zip(names, reduced, strict=True)})
        return out

    def _micro_step(self, exp: Experience, micro: MicroBatch, counts, num_micro: int, shortcut: bool):
        """Forward/backward on one micro-batch; optimiser step when this process's last micro-batch
        of the mini-batch is done.

        The loss is ``sum(token_loss * weights)`` with weights from the global mini-batch counts, so
        the micro-batch losses of all processes add up to the mini-batch loss. accelerate divides
        each loss by the accumulation steps (DeepSpeed: by its configured ones) and DDP/ZeRO average
        gradients over processes; multiplying by both makes the gradient exactly that sum.
        """
        acc, p, r = self.accelerator, self.cfg.ppo, self.cfg.rollout
        kl_in_loss = exp.ref_logprobs is not None and p.kl_placement == "loss"
        idx = micro.idx
        part = exp.rollout.select(idx, micro.widths)
        critic = self.policy.has_critic
        with acc.accumulate(self.policy.model):
            with acc.autocast():
                out = self.policy.score(part, entropy=self._entropy(exp.step), with_values=critic)
            T = out.logprobs.shape[1]
            mask = exp.loss_mask[idx, :T]
            weights = algos.loss_weights(p.loss_agg, mask, counts)
            old_logprobs = out.logprobs.detach() if shortcut else exp.logprobs[idx, :T]
            is_weights = None
            if part.engine_logprobs is not None and r.engine_correction != "none":
                is_weights, _ = algos.engine_is_weights(
                    old_logprobs,
                    part.engine_logprobs[:, :T],
                    mask,
                    r.engine_correction,
                    r.engine_correction_cap,
                    r.engine_correction_level,
                )
            terms = algos.LossTerms(
                cliprange=p.cliprange if p.cliprange_low is None else p.cliprange_low,
                cliprange_value=p.cliprange_value,
                vf_coef=p.vf_coef,
                entropy_coef=p.entropy_coef,
                kl_coef=exp.kl_coef,
                kl_estimator=p.kl_estimator,
                cliprange_high=p.cliprange_high,
                dual_clip=p.dual_clip,
                policy_loss=p.policy_loss,
            )
            loss, metrics = algos.ppo_loss(
                out.logprobs,
                old_logprobs,
                exp.advantages[idx, :T],
                weights,
                terms,
                values=out.values if critic else None,
                old_values=exp.values[idx, :T] if critic else None,
                returns=exp.returns[idx, :T] if critic else None,
                entropy=out.entropy,
                ref_logprobs=exp.ref_logprobs[idx, :T] if kl_in_loss else None,
                metric_weights=algos.metric_weights(mask, counts),
                is_weights=is_weights,
                mask=mask,
            )
            per_backend = self.plan.gradient_accumulation_steps if zero.zero_stage(acc) else num_micro
            acc.backward(loss * (self.plan.world_size * per_backend))
            if acc.sync_gradients:
                self._optimizer_step()
        return metrics, out.logprobs.detach()

    def _entropy(self, step: int) -> str:
        """What the update's forwards compute of the entropy: differentiable for a bonus, for the metric
        at the steps ``log.entropy_every`` asks for it, otherwise nothing (a softmax over the vocabulary
        at every position saved)."""
        if self.cfg.ppo.entropy_coef:
            return "grad"
        every = self.cfg.log.entropy_every
        return "metric" if every and step % every == 0 else "none"

    def _gather_fresh_logprobs(self, exp: Experience, fresh: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """On-policy shortcut: the logprobs each process computed in the update, in global order."""
        acc = self.accelerator
        B, T = exp.rollout.responses.shape
        idx = torch.cat([i for i, _ in fresh])
        local = torch.cat([F.pad(lp.float(), (0, T - lp.shape[1])) for _, lp in fresh])
        all_idx = distributed.gather_1d(acc, idx)
        all_lp = distributed.gather_padded(acc, local)
        out = torch.zeros(B, T, device=acc.device)
        out[all_idx] = all_lp[:, :T]
        return out * exp.response_mask

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
        if self._skip_on_device:
            # found_inf = 1 makes the fused AdamW leave parameters, moments and its step count as they
            # are (as under a GradScaler): no host read per optimiser step; step() counts the skips.
            found = (~torch.isfinite(torch.as_tensor(grad_norm))).float().reshape(())
            self._inner_optimizer.found_inf = found
            self.optimizer.step()
            self._inner_optimizer.found_inf = None  # a later step() of the caller's own (legacy API) must not see it
            self.scheduler.step()
            self._skipped_on_device += found
            self.optimizer.zero_grad(set_to_none=True)
            return
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

    def state_dict(self) -> dict:
        return {"global_step": self.global_step, "skipped_updates": self.skipped_updates}

    def load_state_dict(self, state: dict) -> None:
        self.global_step = int(state["global_step"])
        self.skipped_updates = int(state["skipped_updates"])
