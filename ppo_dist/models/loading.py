"""Loading Hugging Face models and tokenizers by name or path, with one clear error for a bad one.

Every ``from_pretrained`` in the package goes through :func:`load_pretrained` (policy, reference,
the rm stage's classifier, the reward model, tokenizers), so a wrong path or model type is one line
naming it (:class:`ModelLoadError`), never a traceback from deep inside transformers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..config import ModelConfig
from .tokenizer import load_embedded_tokenizer

logger = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message names the path."""


def load_pretrained(auto_class, what: str, name_or_path: str, **kwargs):
    """``auto_class.from_pretrained`` with one clear error for a bad path or model type (``what``:
    the kind of model or tokenizer, for the message)."""
    looks_local = name_or_path.startswith((".", "/", "~")) or (
        os.sep in name_or_path and not _looks_like_hub_id(name_or_path)
    )
    if looks_local and not Path(name_or_path).expanduser().exists():
        raise ModelLoadError(f"model path {name_or_path!r} does not exist")
    try:
        return auto_class.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"could not load {what} from {name_or_path!r}: {first_line}") from None


def load_causal_lm(name_or_path: str, **kwargs) -> PreTrainedModel:
    return load_pretrained(AutoModelForCausalLM, "a causal language model", name_or_path, **kwargs)


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not Path(name).exists() and not name.startswith((".", "/", "~"))


def load_tokenizer(cfg: ModelConfig):
    """The configured tokenizer, left-padded, with a pad token (EOS reused, with a warning, if none)."""
    source = cfg.tokenizer_name_or_path or cfg.name_or_path
    if source is None:
        tokenizer = load_embedded_tokenizer()
    else:
        tokenizer = load_pretrained(AutoTokenizer, "a tokenizer", str(source), trust_remote_code=cfg.trust_remote_code)
    return prepare_tokenizer(tokenizer)


def prepare_tokenizer(tokenizer):
    """A tokenizer as PPO needs it: an EOS token, a pad token (:func:`ensure_pad_token`), left padding."""
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(f"tokenizer {tokenizer.name_or_path!r} has no EOS token; responses could never end")
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = "left"
    return tokenizer


def ensure_pad_token(tokenizer, owner: str = "tokenizer") -> None:
    """Give a tokenizer without a pad token its EOS token for padding, and say so (``owner`` names it)."""
    if tokenizer.pad_token_id is not None:
        return
    if tokenizer.eos_token is None:
        raise ModelLoadError(f"{owner} has neither a pad nor an EOS token")
    # Masks are built from lengths, never from the pad id, so EOS stays in the loss.
    logger.warning("%s has no pad token; using its EOS token %r for padding only", owner, tokenizer.eos_token)
    tokenizer.pad_token = tokenizer.eos_token


def match_pad_token(model, tokenizer) -> None:
    """``model.config.pad_token_id`` = the tokenizer's: the token the inputs are padded with is the one
    generation and sequence-classification pooling (the last non-pad token) look for."""
    model.config.pad_token_id = tokenizer.pad_token_id
