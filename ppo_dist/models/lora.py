"""LoRA adapters (peft) on the policy, and saving a LoRA policy as a merged model plus its adapter."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import PreTrainedModel

from ..config import LoRAConfig
from .loading import ModelLoadError

ADAPTER_DIR = "adapter"


def apply_lora(lm: PreTrainedModel, cfg: LoRAConfig):
    """Wrap ``lm`` with peft LoRA adapters (only the adapters are trainable)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ModelLoadError("model.lora.r > 0 needs peft: pip install 'ppo_dist[peft]'") from None
    from transformers.pytorch_utils import Conv1D

    lora = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in lm.modules()),  # GPT-2 style Conv1D layers
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(lm, lora)
    except ValueError as e:
        raise ModelLoadError(f"model.lora.target_modules={cfg.target_modules!r}: {e}") from None


def save_merged_lora(peft_model, lm_state: dict, path: Path, **kwargs) -> None:
    """``path``: the base model with the adapter merged in (a normal HF directory); ``path/adapter``:
    the adapter alone (``peft.PeftModel.from_pretrained``). ``lm_state`` is the peft model's full
    state dict (consolidated from shards under ZeRO-3), so this works whatever holds the live weights."""
    from peft import get_peft_model, get_peft_model_state_dict

    peft_model.save_pretrained(path / ADAPTER_DIR, state_dict=get_peft_model_state_dict(peft_model, lm_state))
    hf = peft_model.get_base_model()
    dtype = next(iter(lm_state.values())).dtype if lm_state else torch.float32
    # A fresh CPU copy carries the merge, so the live model keeps its adapter (training may go on). Built
    # with the class itself, not from_config: under ZeRO-3 that would partition it (zero.Init, a collective
    # the other processes do not join).
    base = type(hf)(copy.deepcopy(hf.config)).to(dtype)
    clone = get_peft_model(base, copy.deepcopy(peft_model.peft_config["default"]))
    missing, unexpected = clone.load_state_dict(lm_state, strict=False)
    if unexpected or [k for k in missing if "lora_" in k]:
        raise RuntimeError(f"LoRA state does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    clone.merge_and_unload().save_pretrained(path, **kwargs)
