"""``ppo_dist.compat``: the legacy ``PPOTrainer`` API, kept importable here; it lives in :mod:`ppo_dist.legacy`."""

from .legacy.trainer import (  # noqa: F401  (re-exported)
    AutoModelForCausalLMWithValueHead,
    AutoModelForSeq2SeqLMWithValueHead,
    PPOConfig,
    PPOTrainer,
    __all__,
    create_reference_model,
)
