"""The stage registry: the stages of the RLHF pipeline besides PPO (``sft``, ``rm``, ``dpo``) and what they read.

``stage:`` in a run config (``--stage`` on the command line) picks what ``train.py`` trains:

  ppo   the service's own trainer (:mod:`ppo_dist.rl.trainer`), the default
  sft   supervised fine-tuning                  TRL ``SFTTrainer``      -> a causal LM
  rm    a reward model on preference pairs      TRL ``RewardTrainer``   -> a ``reward.model_path`` for PPO
  dpo   direct preference optimisation          TRL ``DPOTrainer``      -> a causal LM

Every stage reads the shared sections (model, data, optim, train, log, checkpoint) with the same
meaning, plus its own section (``sft``, ``rm``, ``dpo``); a setting the chosen stage does not read
is an error (``config.validation``), never silently ignored. This module holds data and checks only
(no transformers, no trl), so ``train.py --help`` and config validation stay fast;
:func:`ppo_dist.stages.runner_class` imports a stage's runner only when a run needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .fields import check, exact_div

if TYPE_CHECKING:
    from .schema import Config


@dataclass(frozen=True)
class Stage:
    module: str  # ppo_dist.stages.<module> defines ``Runner``
    columns: tuple[tuple[str, ...], ...]  # dataset column sets the stage accepts (any one of them)


STAGES = {
    "sft": Stage("sft", (("prompt", "completion"), ("messages",), ("text",))),
    "rm": Stage("rm", (("prompt", "chosen", "rejected"),)),
    "dpo": Stage("dpo", (("prompt", "chosen", "rejected"),)),
}

# Settings that only some stages read; every other setting is read by every stage.
USED_BY: dict[str, tuple[str, ...]] = {
    "rollout": ("ppo",),
    "ppo": ("ppo",),
    "reward": ("ppo",),
    "data.prompts": ("ppo",),
    "data.prompt_column": ("ppo",),
    "data.max_prompt_length": ("ppo",),
    "data.truncation": ("ppo",),
    "model.lora": ("ppo",),
    "model.logits_chunk_tokens": ("ppo",),
    "train.compile": ("ppo",),
    "model.ref_name_or_path": ("ppo", "dpo"),
    "train.max_bad_steps": ("ppo",),
    "train.max_kl": ("ppo",),
    "train.min_entropy": ("ppo",),
    "train.kl_guard": ("ppo",),
    "log.samples_every": ("ppo",),
    "log.entropy_every": ("ppo",),
    "eval": ("ppo",),
    **{name: (name,) for name in STAGES},
}


def stage_names() -> list[str]:
    return ["ppo", *STAGES]


@dataclass(frozen=True)
class StagePlan:
    """Batch arithmetic of a TRL stage. ``batch_size`` is global, ``local_`` per process."""

    world_size: int
    batch_size: int
    gradient_accumulation_steps: int
    local_micro_batch_size: int


def validate_stage(cfg: Config, world_size: int) -> StagePlan:
    """Checks of the stage's own section and its batch arithmetic (``config.validate`` calls this)."""
    name = cfg.stage
    s = getattr(cfg, name)
    check(s.batch_size > 0, f"{name}.batch_size must be > 0, got {s.batch_size}")
    check(
        s.gradient_accumulation_steps > 0,
        f"{name}.gradient_accumulation_steps must be > 0, got {s.gradient_accumulation_steps}",
    )
    check(s.max_length > 0, f"{name}.max_length must be > 0, got {s.max_length}")
    m = cfg.model
    check(
        bool(m.name_or_path) or s.max_length <= m.tiny_n_positions,
        f"{name}.max_length={s.max_length} does not fit the embedded model's model.tiny_n_positions="
        f"{m.tiny_n_positions}; raise it or lower {name}.max_length",
    )
    check(0 <= s.eval_fraction < 1, f"{name}.eval_fraction must be in [0, 1), got {s.eval_fraction}")
    check(s.eval_every >= 0, f"{name}.eval_every must be >= 0, got {s.eval_every}")
    check(
        s.eval_every == 0 or s.eval_fraction > 0,
        f"{name}.eval_every={s.eval_every} needs held-out data: set {name}.eval_fraction > 0",
    )
    if name == "dpo":
        check(s.beta > 0, f"dpo.beta must be > 0, got {s.beta}")
    if name == "rm":
        c = s.center_rewards_coefficient
        check(c is None or c >= 0, f"rm.center_rewards_coefficient must be >= 0 or empty, got {c}")
    local = exact_div(
        s.batch_size,
        world_size * s.gradient_accumulation_steps,
        f"{name}.batch_size={s.batch_size} must be divisible by the world size x {name}.gradient_accumulation_steps "
        f"= {world_size} x {s.gradient_accumulation_steps}",
    )
    return StagePlan(world_size, s.batch_size, s.gradient_accumulation_steps, local)
