"""Data: the PPO prompt stream (:mod:`.prompts`) and the embedded datasets of the sft, rm and dpo stages
(:mod:`.pipeline`)."""

from .pipeline import preference_pairs, sft_examples
from .prompts import PromptBatch, PromptStream, load_dataset_source, load_prompt_dataset, tokenize_prompts

__all__ = [
    "PromptBatch",
    "PromptStream",
    "load_dataset_source",
    "load_prompt_dataset",
    "preference_pairs",
    "sft_examples",
    "tokenize_prompts",
]
