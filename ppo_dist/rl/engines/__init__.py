"""Rollout engines: what samples a process's responses. One protocol, one module per engine.

An engine gets a process's prompts (token ids) and the step's :class:`Sampling` settings and returns
a :class:`~ppo_dist.rl.rollout.Rollout`. It may hold its own copy of the weights and its own sampler
(vLLM): :meth:`RolloutEngine.sync_weights` then brings it up to date with the policy after every
optimiser update, and the rollout carries the sampler's own logprobs (``engine_logprobs``) so the
trainer can measure, and correct for, any mismatch. The in-process HF engine generates with the
policy itself: nothing to sync.

``rollout.engine`` picks one by name from :data:`ppo_dist.config.ROLLOUT_ENGINES` (the names and
the modules that implement them); a new engine is a module here with a ``build(cfg, accelerator,
policy, tokenizer)`` function, registered there.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from typing import Protocol

import torch

from ...config import ROLLOUT_ENGINES, Config, RolloutConfig
from ...runtime import distributed
from ..roles import Policy
from ..rollout import Rollout


@dataclass(frozen=True)
class Sampling:
    """How one step samples, whatever the engine: from ``rollout.*`` plus the step's seed."""

    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_k: int  # 0 = off
    top_p: float  # 1.0 = off
    eos_token_id: int
    pad_token_id: int
    bos_token_id: int | None
    seed: int = 0  # per step and process (distributed.seed_for): runs are reproducible and resumable
    min_new_tokens: int = 0  # EOS is blocked before this many tokens
    step: int = 0  # the PPO step sampled for (1-based), for messages
    # One seed per prompt, from its global index: an engine with per-request seeds (vllm) samples the
    # same responses on any number of processes. Empty: engines derive them from ``seed``.
    sample_seeds: tuple[int, ...] = ()
    chunk_size: int = 0  # prompts per generate call; 0 = all
    policy_mode: str = "eval"  # train: dropout active while sampling (engines that run the policy itself)

    @classmethod
    def from_config(cls, cfg: RolloutConfig, tokenizer) -> Sampling:
        return cls(
            max_new_tokens=cfg.max_new_tokens,
            do_sample=cfg.do_sample,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            chunk_size=cfg.generation_batch_size,
            policy_mode=cfg.policy_mode,
        )

    def with_seed(self, seed: int, **changes) -> Sampling:
        return replace(self, seed=seed, **changes)


class RolloutEngineError(RuntimeError):
    """An engine failed to start, sample or sync; the message names the process, step and engine."""


class RolloutEngine(Protocol):
    """Samples responses for one process's prompts."""

    def generate(self, prompt_ids: list[torch.Tensor], sampling: Sampling) -> Rollout:
        """Responses to ``prompt_ids`` (1-D id tensors, one per sample) on the accelerator's device."""
        ...

    def sync_weights(self, policy: Policy, step: int | None = None) -> float | None:
        """Bring the engine's weights up to date with ``policy`` (after an optimiser update); the
        seconds it took, or None for an engine that samples from the policy itself."""
        ...

    def close(self) -> None:
        """Release what the engine holds (memory, threads); it is not used again."""
        ...


def agreed(accelerator, call, *args):
    """``call(*args)``, with every process agreeing on a :class:`RolloutEngineError` (one all-reduce):
    all raise the same message instead of the healthy ones waiting in the next collective."""
    result = error = None
    try:
        result = call(*args)
    except RolloutEngineError as e:
        error = e
    failures = distributed.failures_everywhere(accelerator, error)
    if failures is not None:
        raise RolloutEngineError("; ".join(m for m in failures if m)) from error
    return result


def build_rollout_engine(cfg: Config, accelerator, policy: Policy, tokenizer) -> RolloutEngine:
    """The engine ``rollout.engine`` names, built for this process."""
    module = importlib.import_module(f"{__name__}.{ROLLOUT_ENGINES[cfg.rollout.engine].module}")
    return module.build(cfg, accelerator, policy, tokenizer)
