"""Policy with a value head, the frozen reference model, tokenizers and the embedded tiny model."""

from __future__ import annotations

import copy
import inspect
import logging
import os
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedModel

from .config import ModelConfig
from .tokenizer import load_embedded_tokenizer

logger = logging.getLogger(__name__)

VALUE_HEAD_FILE = "value_head.pt"


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message names the path."""


class CausalLMWithValueHead(nn.Module):
    """A Hugging Face causal LM plus a scalar value head on its last hidden state.

    ``forward`` returns ``(logits, loss, values)`` like the legacy trl model, so code written for it
    keeps working. ``logits_to_keep=k`` computes logits (and values) for the last ``k`` positions
    only, which is all PPO needs: the response tokens.
    """

    def __init__(self, pretrained_model: PreTrainedModel):
        super().__init__()
        self.pretrained_model = pretrained_model
        hidden = _hidden_size(pretrained_model.config)
        self.v_head = nn.Linear(hidden, 1)
        nn.init.normal_(self.v_head.weight, std=1.0 / (hidden + 1) ** 0.5)
        nn.init.zeros_(self.v_head.bias)
        self._supports_logits_to_keep = "logits_to_keep" in inspect.signature(pretrained_model.forward).parameters

    @property
    def config(self):
        return self.pretrained_model.config

    @property
    def generation_config(self):
        return self.pretrained_model.generation_config

    def forward(
        self, input_ids, attention_mask=None, position_ids=None, labels=None, logits_to_keep: int = 0, **kwargs
    ):
        extra = {"logits_to_keep": logits_to_keep} if (logits_to_keep and self._supports_logits_to_keep) else {}
        out = self.pretrained_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            output_hidden_states=True,
            use_cache=False,
            return_dict=True,
            **extra,
            **kwargs,
        )
        hidden = out.hidden_states[-1]
        logits = out.logits
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
            logits = logits[:, -logits_to_keep:]
        values = self.v_head(hidden.to(self.v_head.weight.dtype)).squeeze(-1)
        return logits, out.loss, values

    def generate(self, *args, **kwargs):
        return self.pretrained_model.generate(*args, **kwargs)

    def num_parameters(self, only_trainable: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    def save_pretrained(self, save_directory: str | os.PathLike, state_dict: dict | None = None, **kwargs) -> None:
        """Save the LM as a normal HF directory, plus ``value_head.pt`` beside it."""
        save_directory = Path(save_directory)
        if state_dict is not None:
            lm_state = {
                k[len("pretrained_model.") :]: v for k, v in state_dict.items() if k.startswith("pretrained_model.")
            }
            head_state = {k[len("v_head.") :]: v for k, v in state_dict.items() if k.startswith("v_head.")}
        else:
            lm_state, head_state = None, self.v_head.state_dict()
        self.pretrained_model.save_pretrained(save_directory, state_dict=lm_state, **kwargs)
        torch.save({k: v.detach().cpu() for k, v in head_state.items()}, save_directory / VALUE_HEAD_FILE)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | PreTrainedModel, **kwargs) -> CausalLMWithValueHead:
        """Load an HF causal LM (path, hub name or model object); restore a saved value head if present."""
        lm = name_or_path if isinstance(name_or_path, PreTrainedModel) else load_causal_lm(str(name_or_path), **kwargs)
        model = cls(lm)
        head = Path(str(name_or_path)) / VALUE_HEAD_FILE if not isinstance(name_or_path, PreTrainedModel) else None
        if head is not None and head.is_file():
            model.v_head.load_state_dict(torch.load(head, map_location="cpu", weights_only=True))
        return model


def _hidden_size(config) -> int:
    for name in ("hidden_size", "n_embd", "d_model", "word_embed_proj_dim"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise ModelLoadError(f"cannot find the hidden size in config of type {type(config).__name__}")


def load_causal_lm(name_or_path: str, **kwargs) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` with one clear error for a bad path or model type."""
    local = Path(name_or_path)
    if (
        name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path and not _looks_like_hub_id(name_or_path)
    ) and not local.exists():
        raise ModelLoadError(f"model path {name_or_path!r} does not exist")
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"could not load a causal language model from {name_or_path!r}: {first_line}") from None


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not Path(name).exists() and not name.startswith((".", "/", "~"))


def disable_dropout(model: nn.Module) -> None:
    """Every dropout probability to 0: ``nn.Dropout`` modules, and the float attention-dropout
    attributes some architectures (T5, BART, OPT) hand to the functional dropout in training mode."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name in ("dropout", "attention_dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


def build_tiny_gpt2(cfg: ModelConfig, tokenizer) -> GPT2LMHeadModel:
    """The embedded default: a GPT-2-shaped model built from a config (seeded by the caller)."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.tiny_n_positions,
        n_embd=cfg.tiny_n_embd,
        n_layer=cfg.tiny_n_layer,
        n_head=cfg.tiny_n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def load_tokenizer(cfg: ModelConfig):
    """The configured tokenizer, left-padded, with a pad token (EOS reused, with a warning, if none)."""
    source = cfg.tokenizer_name_or_path or cfg.name_or_path
    if source is None:
        tokenizer = load_embedded_tokenizer()
    else:
        if str(source).startswith((".", "/", "~")) and not Path(source).expanduser().exists():
            raise ModelLoadError(f"model path {source!r} does not exist")
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError) as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelLoadError(f"could not load a tokenizer from {source!r}: {first_line}") from None
    return prepare_tokenizer(tokenizer)


def prepare_tokenizer(tokenizer):
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(f"tokenizer {tokenizer.name_or_path!r} has no EOS token; responses could never end")
    if tokenizer.pad_token_id is None:
        # Masks are built from lengths, never from the pad id, so EOS stays in the loss.
        logger.warning("tokenizer has no pad token; using EOS (%r) for padding only", tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def build_models(cfg: ModelConfig, tokenizer) -> tuple[CausalLMWithValueHead, PreTrainedModel]:
    """(policy with value head, frozen reference). Seed before calling for reproducible heads."""
    kwargs = {"trust_remote_code": cfg.trust_remote_code} if cfg.name_or_path else {}
    if cfg.name_or_path:
        policy = CausalLMWithValueHead.from_pretrained(cfg.name_or_path, **kwargs)
    else:
        policy = CausalLMWithValueHead(build_tiny_gpt2(cfg, tokenizer))
    if policy.config.pad_token_id is None:
        policy.config.pad_token_id = tokenizer.pad_token_id
    ref = (
        load_causal_lm(cfg.ref_name_or_path, **kwargs)
        if cfg.ref_name_or_path
        else copy.deepcopy(policy.pretrained_model)
    )
    if cfg.disable_dropout:
        disable_dropout(policy)
        disable_dropout(ref)
    freeze(ref)
    return policy, ref


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model
