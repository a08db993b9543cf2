"""ppo_dist: distributed PPO for causal language models on Accelerate (optional DeepSpeed ZeRO).

``from ppo_dist import PPOConfig, PPOTrainer, AutoModelForCausalLMWithValueHead`` gives the legacy
trl PPO API (see :mod:`ppo_dist.compat`). Imported lazily so ``train.py`` can check its config
before torch loads.
"""

_COMPAT = ("PPOConfig", "PPOTrainer", "AutoModelForCausalLMWithValueHead")
__all__ = list(_COMPAT)


def __getattr__(name: str):
    if name in _COMPAT:
        from . import compat

        return getattr(compat, name)
    raise AttributeError(f"module 'ppo_dist' has no attribute {name!r}")
