"""Helpers of legacy ``trl.core`` that example scripts import: ``from ppo_dist.core import LengthSampler``.

They behave as in trl 0.11: ``LengthSampler`` draws from NumPy's global generator and
``set_seed`` seeds ``random``, NumPy and torch (all devices), so a seeded script draws the same
lengths and samples as it did on legacy trl.
"""

from __future__ import annotations

import numpy as np
import torch
from accelerate.utils import set_seed as _accelerate_set_seed
from transformers import TopKLogitsWarper, TopPLogitsWarper

__all__ = ["LengthSampler", "respond_to_batch", "set_seed"]


def set_seed(seed: int) -> None:
    """Seed ``random``, NumPy and torch on every device (legacy ``trl.set_seed``)."""
    _accelerate_set_seed(seed)


class LengthSampler:
    """Uniform random lengths in ``[min_value, max_value)`` (the upper bound excluded, as in legacy trl)."""

    def __init__(self, min_value: int, max_value: int):
        if int(max_value) <= int(min_value):
            raise ValueError(
                f"LengthSampler({min_value}, {max_value}): max_value is excluded, so it must be > min_value"
            )
        self.values = list(range(int(min_value), int(max_value)))

    def __call__(self) -> int:
        return int(np.random.choice(self.values))


@torch.no_grad()
def respond_to_batch(
    model, queries: torch.Tensor, txt_len: int = 20, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Sample ``txt_len`` tokens after each row of ``queries`` ``(B, L)``, one full forward per token.

    ``model`` is a value-head model or a plain causal LM (its first output is the logits). Rows must
    be unpadded and of equal length, as in legacy trl; returns the ``(B, txt_len)`` new tokens.
    Batched, cached sampling is :meth:`PPOTrainer.generate`.
    """
    if not isinstance(queries, torch.Tensor) or queries.dim() != 2:
        raise ValueError("respond_to_batch: queries must be a (batch, length) tensor of token ids")
    top_k_filter = TopKLogitsWarper(top_k=int(top_k)) if top_k > 0 else None
    top_p_filter = TopPLogitsWarper(top_p=top_p)
    input_ids = queries
    for _ in range(txt_len):
        logits = model(input_ids)[0][:, -1, :]
        if top_k_filter is not None:
            logits = top_k_filter(input_ids, logits)
        logits = top_p_filter(input_ids, logits)
        next_token = torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1)
        input_ids = torch.cat([input_ids, next_token], dim=-1)
    return input_ids[:, -txt_len:]
