"""Building the roles' models from the config: the policy (LM, LoRA, value head) and the reference.

The service trainer and the legacy ``PPOTrainer`` both come through here (``prepare_policy`` for a
model the user built), so every policy is prepared the same way: pad token, dropout off,
gradient checkpointing when asked.
"""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from ..config import ModelConfig
from .loading import load_causal_lm, match_pad_token
from .lora import apply_lora
from .tiny import causal_lm
from .value_head import CausalLMWithValueHead, ValueHeadModel, restore_value_head


def disable_dropout(model: nn.Module) -> None:
    """Every dropout probability to 0: ``nn.Dropout`` modules, and the float attention-dropout
    attributes some architectures (T5, BART, OPT) hand to the functional dropout in training mode."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name in ("dropout", "attention_dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def prepare_policy(
    policy: ValueHeadModel, cfg: ModelConfig, tokenizer, disable_dropout_: bool = True
) -> ValueHeadModel:
    """What every policy needs before training, whoever built it (service config or legacy API):
    a pad token id, dropout off, gradient checkpointing when asked. (The scoring path is checked once
    the policy is prepared, when ZeRO-3 can gather a partitioned model: ``rl.build``.)"""
    match_pad_token(policy, tokenizer)
    if disable_dropout_:
        disable_dropout(policy)
    if cfg.gradient_checkpointing:
        policy.hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return policy


def build_policy(cfg: ModelConfig, tokenizer, value_head: bool) -> CausalLMWithValueHead:
    """The policy from the config: ``model.name_or_path`` or the embedded tiny GPT-2, LoRA when
    ``model.lora.r > 0``, a value head when the estimator uses a critic (restored from
    ``value_head.pt`` when the directory has one). Seed first: reproducible heads."""
    lm = causal_lm(cfg, tokenizer, cfg.name_or_path)
    if cfg.lora.r > 0:
        lm = apply_lora(lm, cfg.lora)
    policy = CausalLMWithValueHead(lm, value_head=value_head, logits_chunk_tokens=cfg.logits_chunk_tokens)
    if cfg.name_or_path:
        restore_value_head(policy.v_head, Path(cfg.name_or_path))
    return prepare_policy(policy, cfg, tokenizer, cfg.disable_dropout)


def build_reference_model(cfg: ModelConfig, policy: CausalLMWithValueHead, tokenizer) -> CausalLMWithValueHead | None:
    """A separate frozen reference, or None when the LoRA policy's adapter-disabled self is the
    reference (no second model in memory). ``model.ref_name_or_path`` wins over both."""
    if cfg.ref_name_or_path:
        lm = load_causal_lm(cfg.ref_name_or_path, trust_remote_code=cfg.trust_remote_code)
        ref = CausalLMWithValueHead(lm, value_head=False, logits_chunk_tokens=cfg.logits_chunk_tokens)
    elif policy.is_peft_model:
        return None
    else:
        ref = type(policy)(
            copy.deepcopy(policy.pretrained_model), value_head=False, logits_chunk_tokens=cfg.logits_chunk_tokens
        )
    match_pad_token(ref, tokenizer)
    disable_dropout(ref)
    return freeze(ref)
