"""``ppo_dist.core``: legacy ``trl.core``'s helpers, kept importable here; they live in :mod:`ppo_dist.legacy.core`."""

from .legacy.core import LengthSampler, respond_to_batch, set_seed

__all__ = ["LengthSampler", "respond_to_batch", "set_seed"]
