"""The one wiring of a PPO run: policy, reference, optimizer, experience and update.

:func:`build_learner` builds them for the launched processes; ``train.py``'s
:class:`~ppo_dist.rl.trainer.Trainer` and the legacy :class:`~ppo_dist.legacy.trainer.PPOTrainer`
both come through it (the legacy API passes the models and optimizer its user built). A
:class:`Learner` turns an :class:`~ppo_dist.rl.experience.Experience` into one update and the step's
statistics (:meth:`Learner.learn`).
"""

from __future__ import annotations

import logging

import torch
from transformers import get_scheduler

from .. import algos
from ..config import LR_SCHEDULERS, BatchPlan, Config
from ..data import PromptStream
from ..models import CausalLMWithValueHead, build_policy, build_reference_model, freeze, prepare_policy
from ..rewards import Reward
from ..runtime import zero
from .engines import agreed, build_rollout_engine
from .experience import Experience, ExperienceMaker
from .roles import Policy, Reference
from .rollout import Rollout
from .update import PPOUpdate

logger = logging.getLogger(__name__)


class Learner:
    """What one PPO step runs on: the roles, the experience's owner and the update."""

    def __init__(self, policy: Policy, reference: Reference | None, experience: ExperienceMaker, update: PPOUpdate):
        self.policy, self.reference, self.experience, self.update = policy, reference, experience, update

    @property
    def global_step(self) -> int:
        """PPO steps done (restored with a checkpoint)."""
        return self.update.global_step

    def learn(self, exp: Experience) -> dict[str, float]:
        """The update on ``exp``, then the step's statistics (global; one host sync) and the KL control."""
        metrics = self.update.step(exp)
        values = {**self.experience.statistics(exp), **metrics}
        tensors = [k for k, v in values.items() if isinstance(v, torch.Tensor)]
        floats = torch.stack([values[k].float().reshape(()) for k in tensors]).tolist() if tensors else []
        stats = {**values, **dict(zip(tensors, floats, strict=True)), **exp.timings}
        self.experience.observe(stats)
        seconds = self.sync_engine(exp.step)  # the next rollout samples from the updated policy
        if seconds is not None:
            stats["time/weight_sync"] = seconds
        return stats

    def sync_engine(self, step: int) -> float | None:
        """Copy the policy's weights into a rollout engine that holds its own (vllm); seconds taken, or
        None when the engine samples from the policy itself (hf). After each update, and after a resume."""
        engine = self.experience.engine
        if engine is None:
            return None
        return agreed(self.policy.accelerator, engine.sync_weights, self.policy, step)

    def step(self, rollout: Rollout, scores: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, float]:
        """One update from this process's ``rollout`` and ``scores`` (the legacy ``PPOTrainer.step``)."""
        return self.learn(self.experience.from_rollout(rollout, scores, valid, step=self.global_step + 1))

    def save_pretrained(self, path, tokenizer=None) -> None:
        self.policy.save_pretrained(path, tokenizer)

    # checkpointed state (accelerate's register_for_checkpointing, through the trainer)
    def state_dict(self) -> dict:
        return {**self.update.state_dict(), **self.experience.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.update.load_state_dict(state)
        self.experience.load_state_dict(state)


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


def build_learner(
    cfg: Config,
    accelerator,
    tokenizer,
    plan: BatchPlan,
    *,
    policy: CausalLMWithValueHead | None = None,
    reference: CausalLMWithValueHead | None = None,
    optimizer=None,
    scheduler=None,
    prompts: PromptStream | None = None,
    reward: Reward | None = None,
) -> Learner:
    """Policy, reference, optimizer, experience and update, prepared for the launched processes.

    ``policy`` / ``reference`` / ``optimizer`` / ``scheduler`` are the legacy API's user-given
    objects; anything not given is built from ``cfg`` (seed first for reproducible heads). The
    reference: none when ``ppo.kl_coef`` is 0; the given one; else ``model.ref_name_or_path``;
    else, for a LoRA policy, the policy with its adapter disabled; else a frozen copy of the policy.
    With ``prompts`` and ``reward`` (the service trainer) the learner samples its own experience
    with the ``rollout.engine``; without them (the legacy API) samples come to :meth:`Learner.step`.
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
    if cfg.ppo.packing:
        policy_role.unwrapped.enable_packing()
        if ref_model is not None:  # placed above (under ZeRO-3 inside its engine, hooks on this module)
            ref_model.enable_packing()
    engine = None
    if prompts is not None:
        engine = build_rollout_engine(cfg, accelerator, policy_role, tokenizer)
    experience = ExperienceMaker(
        cfg, accelerator, policy_role, reference_role, tokenizer, plan, prompts=prompts, engine=engine, reward=reward
    )
    update = PPOUpdate(cfg, accelerator, policy_role, optimizer, scheduler, plan)
    return Learner(policy_role, reference_role, experience, update)
