"""Batch arithmetic of a PPO run, checked once, before anything heavy loads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .fields import exact_div

if TYPE_CHECKING:
    from .schema import Config


@dataclass(frozen=True)
class BatchPlan:
    """Batch arithmetic of a run, checked once. Global sizes unprefixed, per-process ``local_``.

    ``batch_size`` counts *samples* (prompts x samples per prompt); the global sample list is each
    prompt repeated ``n_samples_per_prompt`` times, and process ``r`` takes its contiguous
    ``local_batch_size`` slice of it, so a prompt's group may straddle processes.
    """

    world_size: int
    num_prompts: int
    n_samples_per_prompt: int
    batch_size: int
    mini_batch_size: int
    local_batch_size: int
    local_mini_batch_size: int
    local_micro_batch_size: int
    gradient_accumulation_steps: int
    num_mini_batches: int


def plan_batches(cfg: Config, world_size: int) -> BatchPlan:
    r, p = cfg.rollout, cfg.ppo
    n = r.n_samples_per_prompt
    samples = r.batch_size * n
    what = f"rollout.batch_size={r.batch_size} x rollout.n_samples_per_prompt={n} = {samples} samples"
    local_batch = exact_div(samples, world_size, f"{what} must be divisible by the world size={world_size}")
    n_mini = exact_div(
        samples, p.mini_batch_size, f"{what} must be divisible by ppo.mini_batch_size={p.mini_batch_size}"
    )
    local_mini = exact_div(
        p.mini_batch_size,
        world_size,
        f"ppo.mini_batch_size={p.mini_batch_size} must be divisible by the world size={world_size}",
    )
    local_micro = exact_div(
        local_mini,
        p.gradient_accumulation_steps,
        f"per-process mini batch ppo.mini_batch_size/world_size={local_mini} must be divisible by "
        f"ppo.gradient_accumulation_steps={p.gradient_accumulation_steps}",
    )
    return BatchPlan(
        world_size=world_size,
        num_prompts=r.batch_size,
        n_samples_per_prompt=n,
        batch_size=samples,
        mini_batch_size=p.mini_batch_size,
        local_batch_size=local_batch,
        local_mini_batch_size=local_mini,
        local_micro_batch_size=local_micro,
        gradient_accumulation_steps=p.gradient_accumulation_steps,
        num_mini_batches=n_mini,
    )
