"""An encoder-decoder LM (T5, BART, ...) plus a scalar value head on the decoder's last hidden state."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForSeq2SeqLM, PreTrainedModel

from .models import VALUE_HEAD_FILE, CausalLMWithValueHead, ModelLoadError, _hidden_size


class Seq2SeqLMWithValueHead(nn.Module):
    """A Hugging Face seq2seq LM plus a value head: one value per decoder position.

    ``forward(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask)`` returns
    ``(logits, loss, values)`` over the decoder positions, like the legacy trl model (``logits_to_keep=k``:
    the last ``k`` decoder positions only, as in :class:`~ppo_dist.models.CausalLMWithValueHead`); ``generate``
    returns decoder token ids (starting with the decoder start token), as the wrapped model does.
    """

    is_encoder_decoder = True

    def __init__(self, pretrained_model: PreTrainedModel):
        super().__init__()
        if not getattr(pretrained_model.config, "is_encoder_decoder", False):
            raise ModelLoadError(
                f"{type(pretrained_model).__name__} is not an encoder-decoder model; use CausalLMWithValueHead"
            )
        self.pretrained_model = pretrained_model
        hidden = _hidden_size(getattr(pretrained_model.config, "decoder", None) or pretrained_model.config)
        self.v_head = nn.Linear(hidden, 1)
        nn.init.normal_(self.v_head.weight, std=1.0 / (hidden + 1) ** 0.5)
        nn.init.zeros_(self.v_head.bias)

    @property
    def config(self):
        return self.pretrained_model.config

    @property
    def generation_config(self):
        return self.pretrained_model.generation_config

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        labels=None,
        logits_to_keep: int = 0,
        **kwargs,
    ):
        out = self.pretrained_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            labels=labels,
            output_hidden_states=True,
            use_cache=False,
            return_dict=True,
            **kwargs,
        )
        hidden, logits = out.decoder_hidden_states[-1], out.logits
        if logits_to_keep:
            hidden, logits = hidden[:, -logits_to_keep:], logits[:, -logits_to_keep:]
        values = self.v_head(hidden.to(self.v_head.weight.dtype)).squeeze(-1)
        return logits, out.loss, values

    def generate(self, *args, **kwargs):
        return self.pretrained_model.generate(*args, **kwargs)

    def num_parameters(self, only_trainable: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    # Saving is the same as for the causal model: the LM as a normal HF directory, the head beside it.
    save_pretrained = CausalLMWithValueHead.save_pretrained

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | PreTrainedModel, **kwargs) -> Seq2SeqLMWithValueHead:
        """Load an HF seq2seq LM (path, hub name or model object); restore a saved value head if present."""
        if isinstance(name_or_path, PreTrainedModel):
            return cls(name_or_path)
        model = cls(load_seq2seq_lm(str(name_or_path), **kwargs))
        head = Path(str(name_or_path)) / VALUE_HEAD_FILE
        if head.is_file():
            model.v_head.load_state_dict(torch.load(head, map_location="cpu", weights_only=True))
        return model


def load_seq2seq_lm(name_or_path: str, **kwargs) -> PreTrainedModel:
    """``AutoModelForSeq2SeqLM.from_pretrained`` with one clear error for a bad path or model type."""
    if name_or_path.startswith((".", "/", "~")) and not Path(name_or_path).expanduser().exists():
        raise ModelLoadError(f"model path {name_or_path!r} does not exist")
    try:
        return AutoModelForSeq2SeqLM.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"could not load a seq2seq language model from {name_or_path!r}: {first_line}") from None
