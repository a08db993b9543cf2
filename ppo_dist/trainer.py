"""The PPO loop: rollout -> reward -> advantages -> PPO epochs -> log -> checkpoint.

Sharded work (generation, reward, logprob/value passes, forward/backward) runs on each process's
part of the batch. Bookkeeping (KL penalty, GAE, whitening, statistics) runs on the *gathered*
global batch, which is small (a few floats per token), so every process computes the same numbers
and the update does not depend on how the batch is split across processes or micro-batches:
mini-batches are drawn from the global batch by a permutation shared by all processes, and each
process takes its contiguous part of each mini-batch.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import DistributedType, set_seed
from transformers import get_scheduler

from . import algos, distributed, tracking, zero
from .checkpoint import CheckpointManager, complete_checkpoints
from .config import BatchPlan, Config, validate
from .data import PromptStream, load_prompt_dataset, tokenize_prompts
from .models import build_models, load_tokenizer
from .rewards import Reward, RewardError, RewardNormalizer, build_reward
from .rollout import (
    Rollout,
    batched_forward,
    ends_with_eos,
    forward_response,
    generate,
    make_generation_config,
)

logger = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: checkpoint saved on a signal; the launcher should requeue


class NumericsError(FloatingPointError):
    """``train.max_bad_steps`` consecutive PPO steps had skipped updates or non-finite statistics."""


class KLGuardError(RuntimeError):
    """The policy drifted past ``train.max_kl`` / below ``train.min_entropy`` with ``train.kl_guard: stop``."""


class Preempted(SystemExit):
    def __init__(self, step: int):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step = step


def _seed_for(*parts: int) -> int:
    """A 63-bit seed from integers (seed, step, rank, ...), stable across runs and processes."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


@dataclass
class RolloutBatch:
    """The global batch after gathering: every tensor is ``(B, ...)`` on every process."""

    queries: torch.Tensor
    query_mask: torch.Tensor
    responses: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor  # after post-processing (EOS penalty, scale, normalisation, clip); 0 where invalid
    raw_scores: torch.Tensor  # as the reward functions returned them; NaN where invalid
    valid: torch.Tensor  # (B,) bool: samples that take part in the update


class PPOEngine:
    """One PPO update on a batch of (query, response, score), on any number of processes.

    Used by :class:`Trainer` (which also generates) and by the legacy-compatible ``PPOTrainer``.
    """

    def __init__(self, cfg: Config, accelerator, model, ref_model, optimizer, scheduler, tokenizer, plan: BatchPlan):
        self.cfg, self.accelerator, self.plan = cfg, accelerator, plan
        self.model, self.ref_model, self.optimizer, self.scheduler = model, ref_model, optimizer, scheduler
        self.tokenizer = tokenizer
        p = cfg.ppo
        self.kl_ctl = (
            algos.AdaptiveKLController(p.kl_coef, p.kl_target, p.kl_horizon)
            if p.adaptive_kl
            else algos.FixedKLController(p.kl_coef)
        )
        self.normalizer = RewardNormalizer.from_config(cfg.reward)
        self.global_step = 0
        self.skipped_updates = 0
        self.skipped_samples = 0

    # ------------------------------------------------------------------ 3. old logprobs, values, reference

    @torch.no_grad()
    def score_rollout(self, rollout: Rollout, scores: torch.Tensor, valid: torch.Tensor | None = None) -> RolloutBatch:
        """Logprob/value passes on this process's samples, then gather the global batch.

        Scores are post-processed on the gathered batch (so running statistics are the same on any
        number of processes); invalid samples (``reward.on_invalid: skip_sample``) get an empty
        response mask and take no part in the update.
        """
        acc, mb = self.accelerator, self.cfg.rollout.forward_batch_size
        args = (rollout.queries, rollout.query_mask, rollout.responses, rollout.response_mask)
        self.model.eval()
        with acc.autocast():
            logprobs, values = batched_forward(self.model, *args, mb, with_values=True)
            ref_logprobs, _ = batched_forward(self.ref_model, *args, mb, with_values=False)
        pad = self.tokenizer.pad_token_id
        g = lambda t, v=0, first=False: distributed.gather_padded(acc, t, v, first)  # noqa: E731
        valid = torch.ones_like(scores, dtype=torch.bool) if valid is None else valid.bool()
        raw = distributed.gather_1d(acc, scores.to(acc.device).float())
        valid = distributed.gather_1d(acc, valid.to(acc.device))
        finished = ends_with_eos(rollout.responses, rollout.response_mask, self.tokenizer.eos_token_id)
        finished = distributed.gather_1d(acc, finished.to(acc.device))
        processed = torch.where(valid, self.normalizer(raw, finished), torch.zeros_like(raw))
        response_mask = g(rollout.response_mask) * valid.unsqueeze(1)
        self.skipped_samples += int((~valid).sum())
        return RolloutBatch(
            queries=g(rollout.queries, pad, True),
            query_mask=g(rollout.query_mask, 0, True),
            responses=g(rollout.responses, pad),
            response_mask=response_mask,
            logprobs=g(logprobs),
            ref_logprobs=g(ref_logprobs),
            values=g(values),
            scores=processed,
            raw_scores=raw,
            valid=valid,
        )

    # ------------------------------------------------------------------ 4. rewards and advantages

    def advantages(self, batch: RolloutBatch):
        p = self.cfg.ppo
        mask = batch.response_mask.float()
        scores = batch.scores
        kl = algos.kl_penalty(batch.logprobs, batch.ref_logprobs, p.kl_estimator) * mask
        rewards, non_score = algos.token_rewards(scores, kl, mask, self.kl_ctl.value)
        if p.whiten_rewards:
            rewards = algos.masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = algos.gae_advantages(rewards, batch.values, mask, p.gamma, p.lam)
        if p.whiten_advantages:
            advantages = algos.masked_whiten(advantages, mask)
        return advantages.detach(), returns.detach(), kl, non_score

    # ------------------------------------------------------------------ 5. PPO epochs

    def optimize(self, batch: RolloutBatch, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, torch.Tensor]:
        acc, p, plan = self.accelerator, self.cfg.ppo, self.plan
        rank, W, G = acc.process_index, plan.world_size, plan.gradient_accumulation_steps
        mask = batch.response_mask
        sums: dict[str, torch.Tensor] = {}
        self.model.train()
        for epoch in range(p.ppo_epochs):
            if p.shuffle:
                gen = torch.Generator().manual_seed(_seed_for(self.cfg.train.seed, self.global_step, epoch))
                order = torch.randperm(plan.batch_size, generator=gen)
            else:
                order = torch.arange(plan.batch_size)
            for mb_start in range(0, plan.batch_size, plan.mini_batch_size):
                mb_idx = order[mb_start : mb_start + plan.mini_batch_size]
                # Valid tokens of the whole global mini-batch: every micro-batch loss is divided by it.
                normalizer = mask[mb_idx.to(mask.device)].sum().clamp_min(1).float()
                local_idx = mb_idx[rank * plan.local_mini_batch_size : (rank + 1) * plan.local_mini_batch_size]
                for micro_start in range(0, plan.local_mini_batch_size, plan.local_micro_batch_size):
                    idx = local_idx[micro_start : micro_start + plan.local_micro_batch_size].to(mask.device)
                    metrics = self._micro_step(batch, advantages, returns, idx, normalizer * (1.0 / (W * G)))
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + v
        n_minibatches = p.ppo_epochs * plan.num_mini_batches
        # Per-micro-batch metrics were divided by normalizer/(W*G); undo that scale, sum over processes.
        keys = sorted(sums)
        stacked = torch.stack([sums[k] for k in keys]) / (W * G * n_minibatches)
        stacked = distributed.reduce_sum(acc, stacked)
        return dict(zip(keys, stacked, strict=True))

    def _micro_step(self, batch: RolloutBatch, advantages, returns, idx, scaled_normalizer) -> dict[str, torch.Tensor]:
        """Forward/backward on one micro-batch; optimiser step when the accumulation window closes.

        ``scaled_normalizer = tokens_in_global_minibatch / (world_size * accumulation_steps)``:
        accelerate divides the loss by the accumulation steps and DDP averages over processes, so
        this scaling makes the summed gradient the token mean over the global mini-batch exactly.
        """
        acc, p = self.accelerator, self.cfg.ppo
        with acc.accumulate(self.model):
            with acc.autocast():
                logprobs, values, entropy = forward_response(
                    self.model,
                    batch.queries[idx],
                    batch.query_mask[idx],
                    batch.responses[idx],
                    batch.response_mask[idx],
                    with_entropy=True,
                )
            T = logprobs.shape[1]
            m = batch.response_mask[idx, :T].float()
            loss, metrics = algos.ppo_loss(
                logprobs,
                values.float(),
                entropy,
                batch.logprobs[idx, :T],
                batch.values[idx, :T],
                advantages[idx, :T],
                returns[idx, :T],
                m,
                cliprange=p.cliprange,
                cliprange_value=p.cliprange_value,
                vf_coef=p.vf_coef,
                entropy_coef=p.entropy_coef,
                normalizer=scaled_normalizer,
            )
            acc.backward(loss)
            if acc.sync_gradients:
                self._optimizer_step()
        return metrics

    def _optimizer_step(self) -> None:
        acc, max_norm = self.accelerator, self.cfg.optim.max_grad_norm
        if max_norm or acc.distributed_type == DistributedType.DEEPSPEED:
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), max_norm if max_norm else float("inf"))
        else:  # no clipping: the norm only for the finite check (clip_grad_norm_ would also scale every grad by 1)
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
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
        """One PPO update from this process's rollout and scores; returns global statistics."""
        batch = self.score_rollout(rollout, scores, valid)
        self.last_batch = batch  # the gathered batch, for histograms
        advantages, returns, kl, non_score = self.advantages(batch)
        train_metrics = self.optimize(batch, advantages, returns)
        stats = self._stats(batch, kl, non_score, returns, train_metrics)
        if math.isfinite(stats["objective/kl"]):  # a bad step must not poison the KL coefficient
            self.kl_ctl.update(stats["objective/kl"], self.plan.batch_size)
        self.global_step += 1
        return stats

    def _stats(self, batch: RolloutBatch, kl, non_score, returns, train_metrics) -> dict[str, float]:
        mask = batch.response_mask.float()
        q_len = batch.query_mask.sum(1).float()
        r_len = mask.sum(1)
        s = batch.raw_scores[batch.valid]
        if s.numel() == 0:
            raise RewardError(
                f"every sample of step {self.global_step + 1} was invalid (reward.on_invalid=skip_sample)"
            )
        values = {
            "env/reward_mean": s.mean(),
            "env/reward_std": s.std() if s.numel() > 1 else torch.zeros((), device=s.device),
            "env/reward_min": s.min(),
            "env/reward_max": s.max(),
            "env/score_mean": batch.scores[batch.valid].mean(),
            "objective/kl": kl.sum(1).mean(),
            "objective/entropy": (-batch.logprobs * mask).sum(1).mean(),
            "ppo/mean_non_score_reward": non_score.sum(1).mean(),
            "ppo/mean_scores": batch.scores[batch.valid].mean(),
            "ppo/returns/mean": algos.masked_mean(returns, mask),
            "ppo/returns/var": algos.masked_var(returns, mask),
            "tokens/queries_len_mean": q_len.mean(),
            "tokens/responses_len_mean": r_len.mean(),
            "tokens/responses_finished_frac": (r_len < mask.shape[1]).float().mean() if mask.shape[1] else r_len.mean(),
            **{f"ppo/{k}": v for k, v in train_metrics.items()},
        }
        keys = list(values)
        floats = torch.stack([values[k].float().reshape(()) for k in keys]).tolist()  # one host sync
        stats = dict(zip(keys, floats, strict=True))
        stats["objective/kl_coef"] = self.kl_ctl.value
        stats["ppo/learning_rate"] = self.scheduler.get_last_lr()[0]
        stats["ppo/skipped_updates"] = float(self.skipped_updates)
        stats["env/skipped_samples"] = float(self.skipped_samples)
        return stats

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


def build_optimizer(cfg: Config, model, plan: BatchPlan):
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel (CPU and CUDA) is ~3x faster than the per-parameter loop on small models.
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    optimizer = torch.optim.AdamW(
        params,
        lr=o.lr,
        betas=(o.adam_beta1, o.adam_beta2),
        eps=o.adam_eps,
        weight_decay=o.weight_decay,
        fused=fused,
    )
    total = cfg.train.total_steps * cfg.ppo.ppo_epochs * plan.num_mini_batches
    scheduler = get_scheduler(o.lr_scheduler, optimizer, num_warmup_steps=o.warmup_steps, num_training_steps=total)
    return optimizer, scheduler


class Trainer:
    """Builds everything from a :class:`Config` and runs ``train.total_steps`` PPO steps."""

    def __init__(self, cfg: Config, reward: Reward | None = None):
        plan = validate(cfg, distributed.world_size_from_env())  # before any model is loaded
        tracking.check_trackers(cfg.log.trackers)
        _check_writable(Path(cfg.train.output_dir))
        self.cfg, self.plan = cfg, plan
        self.accelerator = acc = distributed.build_accelerator(cfg, plan)
        set_seed(cfg.train.seed)
        logger.info(
            "%s on %d process(es), device %s, ZeRO stage %d",
            acc.distributed_type.value,
            acc.num_processes,
            acc.device,
            zero.zero_stage(acc),
        )
        self.tokenizer = load_tokenizer(cfg.model)
        self.dataset = load_prompt_dataset(cfg.data)
        prompt_ids = tokenize_prompts(
            self.dataset[cfg.data.prompt_column], self.tokenizer, cfg.data.max_prompt_length, cfg.data.truncation
        )
        self.stream = PromptStream(self.dataset, prompt_ids, cfg.data.prompt_column, plan.batch_size, cfg.train.seed)
        self.reward = (reward or build_reward(cfg.reward)).to(acc.device)
        policy, ref = build_models(cfg.model, self.tokenizer)
        optimizer, scheduler = build_optimizer(cfg, policy, plan)
        model, optimizer, scheduler = acc.prepare(policy, optimizer, scheduler)
        ref = zero.prepare_reference(acc, ref)
        self.engine = PPOEngine(cfg, acc, model, ref, optimizer, scheduler, self.tokenizer, plan)
        self.gen_config = make_generation_config(cfg.rollout, self.tokenizer)
        self.checkpoints = CheckpointManager(acc, Path(cfg.train.output_dir) / "checkpoints", cfg.checkpoint.keep)
        acc.register_for_checkpointing(self)  # engine state (step, KL controller) travels with save_state
        self.tracker = tracking.RunTracker(acc, cfg)
        self._stop_signal: int | None = None
        self.bad_steps = 0  # consecutive
        self.history: list[dict[str, float]] = []

    # accelerate's register_for_checkpointing protocol
    def state_dict(self) -> dict:
        return {"engine": self.engine.state_dict(), "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.engine.load_state_dict(state["engine"])
        self.history = list(state["history"])

    # ------------------------------------------------------------------ loop

    def rollout_step(self, step: int) -> tuple[Rollout, torch.Tensor, dict, dict]:
        acc, cfg = self.accelerator, self.cfg
        batch = self.stream.local_batch(step, acc.process_index, acc.num_processes)
        timings = {}
        t0 = time.perf_counter()
        # 1. Rollout: sample responses for this process's prompts (seeded per step: exact resume).
        torch.manual_seed(_seed_for(cfg.train.seed, step, acc.process_index))
        with (
            zero.gathered_for_generation(acc, self.engine.model, cfg.rollout.gather_for_generation) as model,
            acc.autocast(),
        ):
            model.eval()
            rollout = generate(
                model, batch.input_ids, self.tokenizer, self.gen_config, cfg.rollout.generation_batch_size
            )
        timings["time/rollout"] = time.perf_counter() - t0
        # 2. Reward on the decoded texts; every process agrees on failure before any collective.
        t0 = time.perf_counter()
        completions = self.tokenizer.batch_decode(
            rollout.responses * rollout.response_mask + (1 - rollout.response_mask) * self.tokenizer.pad_token_id,
            skip_special_tokens=True,
        )
        error = None
        try:
            components = self.reward(batch.texts, completions, **batch.columns)
        except RewardError as e:
            error, components = e, None
        if distributed.any_process(acc, error is not None):
            # Every process raises the same, full message (one pickled gather, on failure only).
            local = (
                ""
                if error is None
                else str(error)
                + ("" if "completion" in str(error) else f" (first completion of the batch: {completions[0][:80]!r})")
            )
            messages = distributed.gather_strings(acc, local)
            failed = [f"process {r}: {m}" for r, m in enumerate(messages) if m]
            raise RewardError(f"reward failed at step {step + 1} on {'; '.join(failed)}") from error
        timings["time/reward"] = time.perf_counter() - t0
        samples = {"prompts": batch.texts, "completions": completions}
        return rollout, components, timings, samples

    def train(self) -> list[dict[str, float]]:
        acc, cfg = self.accelerator, self.cfg
        start = self.checkpoints.maybe_resume(cfg.checkpoint.resume)
        if start is not None:
            logger.info("resumed from step %d", start)
        self.tracker.start(resume_step=start or 0)
        self._install_signal_handlers()
        logger.info("ready: training from step %d; SIGUSR1/SIGTERM/SIGINT checkpoint and stop", self.engine.global_step)
        progress = _progress(acc, cfg, self.engine.global_step)
        try:
            for step in range(self.engine.global_step, cfg.train.total_steps):
                t_step = time.perf_counter()
                tracking.reset_peak_memory(acc.device)
                rollout, components, timings, samples = self.rollout_step(step)
                skipped_before = self.engine.skipped_updates
                t0 = time.perf_counter()
                stats = self.engine.step(rollout, components["score"], components.get("valid"))
                timings["time/optimize"] = time.perf_counter() - t0
                timings["time/step"] = time.perf_counter() - t_step
                stats.update(timings)
                stats.update(self._component_means(components))
                n_tokens = stats["tokens/responses_len_mean"] * self.plan.batch_size
                stats["throughput/tokens_per_s"] = n_tokens / timings["time/step"]
                stats["throughput/samples_per_s"] = self.plan.batch_size / timings["time/step"]
                stop, stats["memory/peak_gb"] = self._step_flags()
                self.history.append({k: stats[k] for k in ("env/reward_mean", "objective/kl", "objective/kl_coef")})
                if (step + 1) % cfg.log.log_every == 0:
                    self._log(step + 1, stats, samples, components["score"])
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(
                        reward=f"{stats['env/reward_mean']:.3f}",
                        kl=f"{stats['objective/kl']:.3f}",
                        tok_s=f"{stats['throughput/tokens_per_s']:.0f}",
                    )
                bad = self._check_numerics(stats, step, skipped_before)
                self._kl_guard(stats, step)
                done = step + 1 == cfg.train.total_steps
                if cfg.checkpoint.every and (step + 1) % cfg.checkpoint.every == 0 and not done and not bad:
                    self.checkpoints.save(step + 1)
                if stop:
                    self.checkpoints.save(step + 1)
                    logger.warning("stopping on signal after step %d; checkpoint saved", step + 1)
                    raise Preempted(step + 1)
            self.checkpoints.save(cfg.train.total_steps)
            if cfg.train.save_final_model:
                self.save_model(Path(cfg.train.output_dir) / "final_model")
        finally:
            if progress is not None:
                progress.close()
        self._print_summary()
        return self.history

    def _step_flags(self) -> tuple[bool, float]:
        """One reduction per step: has any process been asked to stop, and the peak memory (max over ranks)."""
        acc = self.accelerator
        local = torch.tensor(
            [1.0 if self._stop_signal is not None else 0.0, tracking.peak_memory_gb(acc.device)], device=acc.device
        )
        stop, peak = distributed.reduce_max(acc, local).tolist()
        return stop > 0, peak

    def _log(self, step: int, stats: dict, samples: dict, local_scores: torch.Tensor) -> None:
        batch = self.engine.last_batch
        every = self.cfg.log.samples_every
        table = None
        if every and step % every == 0:
            table = {**samples, "rewards": local_scores.float().tolist()}
        self.tracker.log(step, stats, batch.raw_scores[batch.valid], batch.response_mask.sum(1)[batch.valid], table)

    def _component_means(self, components: dict) -> dict[str, float]:
        names = [k for k in components if k not in ("score", "valid")]
        if len(names) < 2:  # one function: its value is the score
            return {}
        acc = self.accelerator
        local = torch.stack([components[k].float() for k in names], dim=1).to(acc.device)  # (B_local, n)
        means = distributed.gather_1d(acc, local).nanmean(0).tolist()
        return {f"env/reward/{k}": v for k, v in zip(names, means, strict=True)}

    def _check_numerics(self, stats: dict, step: int, skipped_before: int) -> bool:
        """True for a bad step (an optimiser update skipped, or non-finite statistics); raises
        NumericsError after ``train.max_bad_steps`` in a row. Stats are global: every process agrees."""
        skipped = self.engine.skipped_updates - skipped_before
        nonfinite = [k for k in ("ppo/loss/total", "objective/kl", "env/reward_mean") if not math.isfinite(stats[k])]
        if not skipped and not nonfinite:
            self.bad_steps = 0
            return False
        self.bad_steps += 1
        what = ", ".join(
            [f"{skipped} optimiser update(s) skipped (non-finite gradients)"] * bool(skipped)
            + [f"non-finite {', '.join(nonfinite)}"] * bool(nonfinite)
        )
        limit = self.cfg.train.max_bad_steps
        if self.bad_steps >= limit:
            saved = complete_checkpoints(self.checkpoints.root)
            raise NumericsError(
                f"{self.bad_steps} bad PPO steps in a row (last: step {step + 1}: {what}); "
                f"lower optim.lr or check the reward scale. Last checkpoint: "
                f"{saved[-1][1] if saved else 'none'} (bad steps are never checkpointed)"
            )
        logger.warning("bad PPO step %d (%d/%d in a row): %s; not checkpointed", step + 1, self.bad_steps, limit, what)
        return True

    def _kl_guard(self, stats: dict, step: int) -> None:
        t = self.cfg.train
        problems = []
        if t.max_kl is not None and stats["objective/kl"] > t.max_kl:
            problems.append(f"objective/kl={stats['objective/kl']:.3g} > train.max_kl={t.max_kl}")
        if t.min_entropy is not None and stats["objective/entropy"] < t.min_entropy:
            problems.append(f"objective/entropy={stats['objective/entropy']:.3g} < train.min_entropy={t.min_entropy}")
        if not problems:
            return
        message = (
            f"KL guard at step {step + 1}: {'; '.join(problems)} "
            "(the policy is drifting from the reference or collapsing)"
        )
        if t.kl_guard == "stop":
            saved = complete_checkpoints(self.checkpoints.root)
            raise KLGuardError(
                f"{message}; stopped. Last checkpoint: {saved[-1][1] if saved else 'none'}. "
                "Lower optim.lr or raise ppo.kl_coef"
            )
        logger.warning("%s; going on (train.kl_guard=warn)", message)

    def save_model(self, path: Path) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        state = acc.get_state_dict(self.engine.model)
        if acc.is_main_process:
            model = distributed.unwrap(acc, self.engine.model)
            model.save_pretrained(path, state_dict=state)
            self.tokenizer.save_pretrained(path)
        acc.wait_for_everyone()

    def _print_summary(self) -> None:
        if not self.accelerator.is_main_process or not self.history:
            return
        k = min(10, max(1, len(self.history) // 2))
        first = sum(h["env/reward_mean"] for h in self.history[:k]) / k
        last = sum(h["env/reward_mean"] for h in self.history[-k:]) / k
        print(
            f"mean reward: first {k} steps {first:.3f} -> last {k} steps {last:.3f} "
            f"(kl {self.history[-1]['objective/kl']:.3f}, kl_coef {self.history[-1]['objective/kl_coef']:.4f})",
            flush=True,
        )

    def _install_signal_handlers(self) -> None:
        def handler(signum, frame):
            self._stop_signal = signum

        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)

    def close(self) -> None:
        distributed.shutdown(self.accelerator)


def _check_writable(path: Path) -> None:
    """Fail before any model loads when ``train.output_dir`` cannot hold checkpoints."""
    from .config import ConfigError

    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"train.output_dir={str(path)!r} is not writable: {e.strerror or e}") from None


def _progress(acc, cfg: Config, start: int):
    if not (cfg.log.progress_bar and acc.is_main_process):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.train.total_steps, initial=start, desc="ppo", dynamic_ncols=True)
