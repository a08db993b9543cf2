"""The training loop: experience -> update -> log -> guards -> checkpoint, ``train.total_steps`` times.

Everything below the loop lives with its component: a step's experience in :mod:`.experience`, the
update in :mod:`.update` (both wired by :mod:`.learner`), logging in :mod:`ppo_dist.runtime.tracking`,
guards and stop signals in :mod:`ppo_dist.runtime.guards`, checkpoints in :mod:`ppo_dist.runtime.checkpoint`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from accelerate.utils import set_seed

from ..config import Config, validate
from ..data import PromptStream, load_prompt_dataset, tokenize_prompts
from ..models import load_tokenizer
from ..rewards import Reward, build_reward
from ..runtime import distributed, tracking, zero
from ..runtime.checkpoint import CheckpointManager, check_writable
from ..runtime.guards import KLGuard, NumericsGuard, Preempted, StopSignals
from .evaluation import Evaluator
from .learner import build_learner

logger = logging.getLogger(__name__)


class Trainer:
    """Builds everything from a :class:`Config` and runs ``train.total_steps`` steps."""

    def __init__(self, cfg: Config, reward: Reward | None = None):
        plan = validate(cfg, distributed.world_size_from_env())  # before any model is loaded
        tracking.check_trackers(cfg.log.trackers)
        check_writable(Path(cfg.train.output_dir))
        self.cfg, self.plan = cfg, plan
        # Inputs first: a bad reward spec or prompt file is a config error before any process group or model.
        reward = reward or build_reward(cfg.reward)
        self.tokenizer = load_tokenizer(cfg.model)
        dataset = load_prompt_dataset(cfg.data)
        d = cfg.data
        prompt_ids = tokenize_prompts(dataset[d.prompt_column], self.tokenizer, d.max_prompt_length, d.truncation)
        prompts = PromptStream(dataset, prompt_ids, d.prompt_column, plan.num_prompts, cfg.train.seed)
        self.accelerator = acc = distributed.build_accelerator(cfg, plan)
        set_seed(cfg.train.seed)
        logger.info(
            "%s on %d process(es), device %s, ZeRO stage %d",
            acc.distributed_type.value,
            acc.num_processes,
            acc.device,
            zero.zero_stage(acc),
        )
        reward.to(acc.device)
        self.learner = build_learner(cfg, acc, self.tokenizer, plan, prompts=prompts, reward=reward)
        engine = self.learner.experience.engine
        self.evaluator = Evaluator(cfg, acc, engine, reward, self.tokenizer) if cfg.eval.every else None
        root = Path(cfg.train.output_dir) / "checkpoints"
        self.checkpoints = CheckpointManager(acc, root, cfg.checkpoint.keep, cfg.checkpoint.every)
        acc.register_for_checkpointing(self)  # the learner's state (step, KL controller, ...) travels with save_state
        self.tracker = tracking.RunTracker(acc, cfg)
        self.numerics, self.kl_guard = NumericsGuard(cfg.train, root), KLGuard(cfg.train, root)
        self.signals = StopSignals()
        self.history: list[dict[str, float]] = []

    # accelerate's register_for_checkpointing protocol
    def state_dict(self) -> dict:
        return {"engine": self.learner.state_dict(), "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state["engine"])
        self.history = list(state["history"])

    # ------------------------------------------------------------------ the loop

    def train(self) -> list[dict[str, float]]:
        acc, cfg, learner = self.accelerator, self.cfg, self.learner
        start = self.checkpoints.maybe_resume(cfg.checkpoint.resume)
        if start is not None:
            logger.info("resumed from step %d", start)
            learner.sync_engine(start)  # an engine with its own weights still holds the initial ones
        self.tracker.start(resume_step=start or 0)
        self.signals.install()
        logger.info("ready: training from step %d; SIGUSR1/SIGTERM/SIGINT checkpoint and stop", learner.global_step)
        progress = tracking.progress_bar(acc, cfg, learner.global_step)
        for step in range(learner.global_step + 1, cfg.train.total_steps + 1):
            t_step = time.perf_counter()
            tracking.reset_peak_memory(acc.device)
            skipped_before = learner.update.skipped_updates
            # 1-6. experience: prompts -> rollout -> reward -> logprobs / values / reference -> advantages
            experience = learner.experience.make(step)
            # 7. update: PPO epochs over the global batch, then the step's statistics (and an evaluation when due)
            stats = learner.learn(experience)
            stats["time/optimize"] = stats["time/logprobs"] + stats["time/advantages"] + stats["time/update"]
            if self.evaluator is not None and self.evaluator.due(step):  # on the updated policy
                stats.update(self.evaluator.run(step))
            stats["time/step"] = time.perf_counter() - t_step
            stop, stats["memory/peak_gb"] = self._step_flags()
            stats.update(tracking.throughput(stats, self.plan.batch_size))
            # 8. log
            self.history.append({k: stats[k] for k in tracking.HISTORY_KEYS if k in stats})
            self.tracker.log_step(step, stats, experience)
            tracking.update_progress(progress, stats)
            # 9. guards, 10. checkpoint
            bad = self.numerics.check(stats, step, learner.update.skipped_updates - skipped_before)
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

    def _step_flags(self) -> tuple[bool, float]:
        """One reduction per step: has any process been asked to stop, and the peak memory (max over ranks)."""
        acc = self.accelerator
        flags = [1.0 if self.signals.requested else 0.0, tracking.peak_memory_gb(acc.device)]
        stop, peak = distributed.reduce_max(acc, torch.tensor(flags, device=acc.device)).tolist()
        return stop > 0, peak

    def save_model(self, path: Path) -> None:
        self.learner.save_pretrained(path, self.tokenizer)

    def close(self) -> None:
        if self.learner.experience.engine is not None:
            self.learner.experience.engine.close()
        distributed.shutdown(self.accelerator)
