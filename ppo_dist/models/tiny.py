"""The embedded default model: a GPT-2-shaped causal LM built from a config (no download)."""

from __future__ import annotations

from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from ..config import ModelConfig
from .loading import load_causal_lm, match_pad_token


def build_tiny_gpt2(cfg: ModelConfig, tokenizer) -> GPT2LMHeadModel:
    """The embedded default: a GPT-2-shaped model built from a config (seeded by the caller)."""
    return GPT2LMHeadModel(tiny_gpt2_config(cfg, tokenizer))


def tiny_gpt2_config(cfg: ModelConfig, tokenizer) -> GPT2Config:
    """The embedded default's shape (``model.tiny_*``) for ``tokenizer``."""
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.tiny_n_positions,
        n_embd=cfg.tiny_n_embd,
        n_layer=cfg.tiny_n_layer,
        n_head=cfg.tiny_n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def causal_lm(cfg: ModelConfig, tokenizer, name_or_path: str | None) -> PreTrainedModel:
    """The causal LM at ``name_or_path``, or the embedded tiny GPT-2 when empty (seeded by the caller),
    with its pad token id matching ``tokenizer``."""
    if name_or_path:
        model = load_causal_lm(name_or_path, trust_remote_code=cfg.trust_remote_code)
    else:
        model = build_tiny_gpt2(cfg, tokenizer)
    match_pad_token(model, tokenizer)
    return model
