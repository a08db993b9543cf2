"""Evaluation during training: the reward and pass@k of the current policy on held-out prompts.

Every ``eval.every`` PPO steps (and after the last) each of ``eval.prompts`` gets ``eval.n_samples``
responses from the rollout engine, greedy or sampled (``eval.do_sample``), sharded over the processes
like a rollout; the reward scores them. Logged: ``eval/reward_mean`` (over every response) and
``eval/pass@k`` (k = ``eval.n_samples``: the share of prompts with at least one response whose reward
is at least ``eval.pass_threshold``). Seeds depend on the step and the sample's index, so the numbers
are the same on any number of processes with an engine that seeds per sample (vLLM).
"""

from __future__ import annotations

import dataclasses
import time

import torch

from ..config import Config, DataConfig
from ..data import load_prompt_dataset, tokenize_prompts
from ..rewards import Reward
from ..runtime import distributed
from .engines import RolloutEngine, Sampling, agreed
from .experience import score_agreed
from .rollout import decode_responses


class Evaluator:
    """Owns the evaluation prompts and its cadence; see the module doc."""

    def __init__(self, cfg: Config, accelerator, engine: RolloutEngine, reward: Reward, tokenizer):
        self.cfg, self.accelerator, self.engine = cfg, accelerator, engine
        self.reward, self.tokenizer = reward, tokenizer
        e, d = cfg.eval, cfg.data
        source = DataConfig(prompt_column=d.prompt_column)
        if isinstance(e.prompts, str):
            source.path = e.prompts
        else:
            source.prompts = list(e.prompts)
        dataset = load_prompt_dataset(source)
        self.texts = list(dataset[d.prompt_column][:])
        self.ids = tokenize_prompts(self.texts, tokenizer, d.max_prompt_length, d.truncation)
        sampling = Sampling.from_config(cfg.rollout, tokenizer)
        self.sampling = dataclasses.replace(sampling, do_sample=e.do_sample, policy_mode="eval")

    def due(self, step: int) -> bool:
        every = self.cfg.eval.every
        return bool(every) and (step % every == 0 or step == self.cfg.train.total_steps)

    @torch.no_grad()
    def run(self, step: int) -> dict[str, float]:
        """Sample, score and reduce: ``eval/reward_mean``, ``eval/pass@k``, ``time/eval``."""
        t0 = time.perf_counter()
        acc, k = self.accelerator, self.cfg.eval.n_samples
        total = len(self.texts) * k
        per_process = -(-total // acc.num_processes)  # the last process's share is padded with repeats
        start = acc.process_index * per_process
        mine = [min(i, total - 1) for i in range(start, start + per_process)]
        seeds = tuple(distributed.seed_for(self.cfg.train.seed, step, -7, i) for i in mine)
        sampling = self.sampling.with_seed(distributed.seed_for(self.cfg.train.seed, step, -7), step=step)
        sampling = dataclasses.replace(sampling, sample_seeds=seeds)
        rollout = agreed(acc, self.engine.generate, [self.ids[i // k] for i in mine], sampling)
        completions = decode_responses(self.tokenizer, rollout)
        components = score_agreed(acc, self.reward, step, [self.texts[i // k] for i in mine], completions, {})
        scores = components["score"].float().to(acc.device)
        scores = distributed.gather_1d(acc, scores)[:total]  # global sample order; padding dropped
        per_prompt = scores.reshape(len(self.texts), k)
        passed = (per_prompt >= self.cfg.eval.pass_threshold).any(1).float()
        return {
            "eval/reward_mean": per_prompt.nanmean().item(),
            f"eval/pass@{k}": passed.mean().item(),
            "time/eval": time.perf_counter() - t0,
        }
