"""ppo_dist: distributed PPO for causal language models on Accelerate (optional DeepSpeed ZeRO).

The legacy trl (<= 0.11) PPO API is importable from the top level, as from ``trl``::

    from ppo_dist import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer, set_seed
    from ppo_dist.core import LengthSampler

(see :mod:`ppo_dist.legacy`). Imported lazily so ``train.py`` can check its config before transformers and
the models load.
"""

_LEGACY = {  # name -> module of ppo_dist.legacy
    **dict.fromkeys(["AutoModelForCausalLMWithValueHead", "AutoModelForSeq2SeqLMWithValueHead"], "models"),
    **{"PPOConfig": "config", "PPOTrainer": "trainer", "create_reference_model": "models", "set_seed": "core"},
}
__all__ = list(_LEGACY)


def __getattr__(name: str):
    if name not in _LEGACY:
        raise AttributeError(f"module 'ppo_dist' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".legacy.{_LEGACY[name]}", __name__), name)
