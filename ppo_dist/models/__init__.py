"""Models: loading (:mod:`.loading`), the value-head wrapper the engine scores with (:mod:`.value_head`),
LoRA (:mod:`.lora`), building the policy and reference from the config (:mod:`.policy`), and the
embedded tiny GPT-2 with its byte-level tokenizer (:mod:`.tiny`, :mod:`.tokenizer`)."""

from .loading import (
    ModelLoadError,
    ensure_pad_token,
    load_causal_lm,
    load_pretrained,
    load_tokenizer,
    match_pad_token,
    prepare_tokenizer,
)
from .lora import ADAPTER_DIR, apply_lora, save_merged_lora
from .policy import build_policy, build_reference_model, disable_dropout, freeze, prepare_policy
from .tiny import build_tiny_gpt2, causal_lm, tiny_gpt2_config
from .value_head import (
    VALUE_HEAD_FILE,
    CausalLMWithValueHead,
    TokenScores,
    ValueHeadModel,
    is_peft_model,
    restore_value_head,
    strip_prefix,
)

__all__ = [
    "ADAPTER_DIR",
    "CausalLMWithValueHead",
    "ModelLoadError",
    "TokenScores",
    "VALUE_HEAD_FILE",
    "ValueHeadModel",
    "apply_lora",
    "build_policy",
    "build_reference_model",
    "build_tiny_gpt2",
    "causal_lm",
    "disable_dropout",
    "ensure_pad_token",
    "freeze",
    "is_peft_model",
    "load_causal_lm",
    "load_pretrained",
    "load_tokenizer",
    "match_pad_token",
    "prepare_policy",
    "prepare_tokenizer",
    "restore_value_head",
    "save_merged_lora",
    "strip_prefix",
    "tiny_gpt2_config",
]
