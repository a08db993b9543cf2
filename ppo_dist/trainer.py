"""The training loop: rollout -> reward -> update (advantages, PPO epochs) -> log -> guards -> checkpoint.

Everything below the loop lives with its component: the update in :mod:`ppo_dist.engine`, logging in
:mod:`ppo_dist.tracking`, guards and stop signals in :mod:`ppo_dist.guards`, checkpoints in
:mod:`ppo_dist.checkpoint`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from accelerate.utils import set_seed

from . import distributed, tracking, zero
from .checkpoint import CheckpointManager
from .config import Config, ConfigError, validate
from .data import PromptStream, load_prompt_dataset, tokenize_prompts
from .engine import build_engine, seed_for
from .guards import PREEMPTED_EXIT_CODE, KLGuard, KLGuardError, NumericsError, NumericsGuard, Preempted, StopSignals
from .models import load_tokenizer
from .rewards import Reward, RewardError, build_reward
from .rollout import Rollout, generate, make_generation_config

__all__ = ["Trainer", "PREEMPTED_EXIT_CODE", "KLGuardError", "NumericsError", "Preempted"]

logger = logging.getLogger(__name__)


class Trainer:
    """Builds everything from a :class:`Config` and runs ``train.total_steps`` steps."""

    def __init__(self, cfg: Config, reward: Reward | None = None):
        plan = validate(cfg, distributed.world_size_from_env())  # before any model is loaded
        tracking.check_trackers(cfg.log.trackers)
        check_writable(Path(cfg.train.output_dir))
        self.cfg, self.plan = cfg, plan
        # Inputs first: a bad reward spec or prompt file is a config error before any process group or model.
        self.reward = reward or build_reward(cfg.reward)
        self.tokenizer = load_tokenizer(cfg.model)
        self.dataset = load_prompt_dataset(cfg.data)
        d = cfg.data
        prompt_ids = tokenize_prompts(self.dataset[d.prompt_column], self.tokenizer, d.max_prompt_length, d.truncation)
        self.stream = PromptStream(self.dataset, prompt_ids, d.prompt_column, plan.num_prompts, cfg.train.seed)
        self.accelerator = acc = distributed.build_accelerator(cfg, plan)
        set_seed(cfg.train.seed)
        logger.info(
            "%s on %d process(es), device %s, ZeRO stage %d",
            acc.distributed_type.value,
            acc.num_processes,
            acc.device,
            zero.zero_stage(acc),
        )
        self.reward.to(acc.device)
        self.engine = build_engine(cfg, acc, self.tokenizer, plan)
        self.gen_config = make_generation_config(cfg.rollout, self.tokenizer)
        root = Path(cfg.train.output_dir) / "checkpoints"
        self.checkpoints = CheckpointManager(acc, root, cfg.checkpoint.keep, cfg.checkpoint.every)
        acc.register_for_checkpointing(self)  # engine state (step, KL controller) travels with save_state
        self.tracker = tracking.RunTracker(acc, cfg)
        self.numerics, self.kl_guard = NumericsGuard(cfg.train, root), KLGuard(cfg.train, root)
        self.signals = StopSignals()
        self.history: list[dict[str, float]] = []

    # accelerate's register_for_checkpointing protocol
    def state_dict(self) -> dict:
        return {"engine": self.engine.state_dict(), "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.engine.load_state_dict(state["engine"])
        self.history = list(state["history"])

    # ------------------------------------------------------------------ the loop

    def train(self) -> list[dict[str, float]]:
        acc, cfg = self.accelerator, self.cfg
        start = self.checkpoints.maybe_resume(cfg.checkpoint.resume)
        if start is not None:
            logger.info("resumed from step %d", start)
        self.tracker.start(resume_step=start or 0)
        self.signals.install()
        logger.info("ready: training from step %d; SIGUSR1/SIGTERM/SIGINT checkpoint and stop", self.engine.global_step)
        progress = tracking.progress_bar(acc, cfg, self.engine.global_step)
        for step in range(self.engine.global_step + 1, cfg.train.total_steps + 1):
            t_step = time.perf_counter()
            tracking.reset_peak_memory(acc.device)
            # 1. rollout and 2. reward on this process's samples
            rollout, components, samples, timings = self.rollout_step(step)
            # 3-5. old logprobs / values / reference, advantages, PPO epochs (global batch)
            skipped_before = self.engine.skipped_updates
            t0 = time.perf_counter()
            stats = self.engine.step(rollout, components["score"], components.get("valid"))
            timings["time/optimize"] = time.perf_counter() - t0
            timings["time/step"] = time.perf_counter() - t_step
            stop, peak_gb = self._step_flags()
            stats.update(timings, **self._component_means(components), **{"memory/peak_gb": peak_gb})
            stats.update(tracking.throughput(stats, self.plan.batch_size))
            # 6. log
            self.history.append({k: stats[k] for k in tracking.HISTORY_KEYS if k in stats})
            self.tracker.log_step(step, stats, self.engine.last_batch, samples, components["score"])
            tracking.update_progress(progress, stats)
            # 7. guards, 8. checkpoint
            bad = self.numerics.check(stats, step, self.engine.skipped_updates - skipped_before)
            self.kl_guard.check(stats, step)
            # A bad step skipped its update, so the weights are still those of the last good one: periodic
            # checkpoints skip it, a stop still saves (the data and RNG positions are those after step N).
            if stop or (self.checkpoints.due(step, last=step == cfg.train.total_steps) and not bad):
                self.checkpoints.save(step)
            if stop:
                logger.warning("stopping on signal after step %d; checkpoint saved", step)
                raise Preempted(step)
        self.checkpoints.save(cfg.train.total_steps)
        if cfg.train.save_final_model:
            self.save_model(Path(cfg.train.output_dir) / "final_model")
        if progress is not None:
            progress.close()
        tracking.print_summary(acc, self.history)
        return self.history

    def rollout_step(self, step: int) -> tuple[Rollout, dict, dict, dict]:
        """Generate and score this process's samples of ``step`` (1-based)."""
        acc, cfg = self.accelerator, self.cfg
        batch = self.stream.local_batch(step - 1, acc.process_index, acc.num_processes, self.plan.n_samples_per_prompt)
        t0 = time.perf_counter()
        torch.manual_seed(seed_for(cfg.train.seed, step - 1, acc.process_index))  # per step: exact resume
        with (
            zero.gathered_for_generation(acc, self.engine.model, cfg.rollout.gather_for_generation) as model,
            acc.autocast(),
        ):
            model.eval()
            rollout = generate(
                model, batch.input_ids, self.tokenizer, self.gen_config, cfg.rollout.generation_batch_size
            )
        timings = {"time/rollout": time.perf_counter() - t0}
        t0 = time.perf_counter()
        pad = self.tokenizer.pad_token_id
        valid_tokens = rollout.responses * rollout.response_mask + (1 - rollout.response_mask) * pad
        completions = self.tokenizer.batch_decode(valid_tokens, skip_special_tokens=True)
        error = components = None
        try:
            components = self.reward(batch.texts, completions, **batch.columns)
        except RewardError as e:
            error = e
            if "completion" not in str(e):
                error = RewardError(f"{e} (first completion of the batch: {completions[0][:80]!r})")
        failures = distributed.failures_everywhere(acc, error)
        if failures is not None:  # every process raises the same, full message
            failed = "; ".join(f"process {rank}: {m}" for rank, m in enumerate(failures) if m)
            raise RewardError(f"reward failed at step {step} on {failed}") from error
        timings["time/reward"] = time.perf_counter() - t0
        return rollout, components, {"prompts": batch.texts, "completions": completions}, timings

    def _step_flags(self) -> tuple[bool, float]:
        """One reduction per step: has any process been asked to stop, and the peak memory (max over ranks)."""
        acc = self.accelerator
        flags = [1.0 if self.signals.requested else 0.0, tracking.peak_memory_gb(acc.device)]
        stop, peak = distributed.reduce_max(acc, torch.tensor(flags, device=acc.device)).tolist()
        return stop > 0, peak

    def _component_means(self, components: dict) -> dict[str, float]:
        names = [k for k in components if k not in ("score", "valid")]
        if len(names) < 2:  # one function: its value is the score
            return {}
        acc = self.accelerator
        local = torch.stack([components[k].float() for k in names], dim=1).to(acc.device)  # (B_local, n)
        means = distributed.gather_1d(acc, local).nanmean(0).tolist()
        return {f"env/reward/{k}": v for k, v in zip(names, means, strict=True)}

    def save_model(self, path: Path) -> None:
        self.engine.save_pretrained(path, self.tokenizer)

    def close(self) -> None:
        distributed.shutdown(self.accelerator)


def check_writable(path: Path) -> None:
    """Fail before any model loads when ``train.output_dir`` cannot hold checkpoints."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"train.output_dir={str(path)!r} is not writable: {e.strerror or e}") from None
