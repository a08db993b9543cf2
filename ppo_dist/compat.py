"""``ppo_dist.compat``: the legacy ``PPOTrainer`` API, kept importable here; it lives in :mod:`ppo_dist.legacy`."""

from .legacy.config import PPOConfig
from .legacy.models import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead, create_reference_model
from .legacy.trainer import PPOTrainer

__all__ = [
    "PPOConfig",
    "PPOTrainer",
    "AutoModelForCausalLMWithValueHead",
    "AutoModelForSeq2SeqLMWithValueHead",
    "create_reference_model",
]
