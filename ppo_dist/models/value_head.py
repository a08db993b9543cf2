"""The policy's model: a Hugging Face LM (optionally with LoRA) plus, when it is the critic too, a value head.

The engine talks to models through one call: ``model(input_ids=queries, attention_mask=query_mask,
responses=..., response_mask=..., entropy=..., with_values=...)`` returns :class:`TokenScores` for
the response tokens. It goes through the module's ``forward`` so that DDP / DeepSpeed wrappers see
it (gradient synchronisation, ZeRO-3 parameter gathering). Without ``responses`` the forward is the
legacy trl one, ``(logits, loss, values)``.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from transformers import PreTrainedModel

from .. import algos
from .loading import ModelLoadError, load_causal_lm
from .lora import save_merged_lora
from .packing import packed_hidden, packed_layout

VALUE_HEAD_FILE = "value_head.pt"


class TokenScores(NamedTuple):
    """What the engine asks a model for, per response token: ``(B, T)`` float32 tensors. (A named
    tuple: DeepSpeed ZeRO-3 finds the tensors of a module's output in tuples, not in dataclasses.)"""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None = None
    values: torch.Tensor | None = None


def is_peft_model(lm: nn.Module) -> bool:
    return hasattr(lm, "disable_adapter") and hasattr(lm, "get_base_model")


def _hf_model(lm: nn.Module) -> PreTrainedModel:
    """The Hugging Face model inside a peft wrapper (LoRA layers are injected into it in place)."""
    return lm.get_base_model() if is_peft_model(lm) else lm


class ValueHeadModel(nn.Module):
    """A Hugging Face LM (optionally wrapped by peft) plus, when it is the critic too, a scalar value
    head on its last hidden state; ``v_head`` is None for critic-free estimators and reference models.

    Subclasses give the architecture: :class:`CausalLMWithValueHead` and
    :class:`~ppo_dist.seq2seq.Seq2SeqLMWithValueHead` implement ``_score`` (the engine's call) and
    ``_legacy_forward`` (legacy trl's ``(logits, loss, values)``).
    """

    is_encoder_decoder = False

    def __init__(self, pretrained_model: PreTrainedModel, value_head: bool = True, logits_chunk_tokens: int = 0):
        super().__init__()
        self.pretrained_model = pretrained_model
        config = _hf_model(pretrained_model).config
        self.v_head = None
        if value_head:
            hidden = _hidden_size(getattr(config, "decoder", None) or config)
            self.v_head = nn.Linear(hidden, 1)
            nn.init.normal_(self.v_head.weight, std=1.0 / (hidden + 1) ** 0.5)
            nn.init.zeros_(self.v_head.bias)
        self.chunk_tokens = algos.chunk_tokens_for(config.vocab_size, logits_chunk_tokens)
        self.packing = False  # ppo.packing: scoring forwards on packed rows (enable_packing)

    @property
    def hf_model(self) -> PreTrainedModel:
        """The Hugging Face model (inside the peft wrapper, whose LoRA layers are injected into it)."""
        return _hf_model(self.pretrained_model)

    @property
    def config(self):
        return self.hf_model.config

    @property
    def generation_config(self):
        return self.hf_model.generation_config

    @property
    def is_peft_model(self) -> bool:
        return is_peft_model(self.pretrained_model)

    def adapter_disabled(self):
        """Context in which the LoRA policy is its base model (the reference); an error without LoRA."""
        if not self.is_peft_model:
            raise RuntimeError("adapter_disabled() needs a LoRA (peft) policy")
        return self.pretrained_model.disable_adapter()

    def forward(self, *args, responses=None, response_mask=None, entropy: str = "none", with_values=False, **kwargs):
        """With ``responses``: :class:`TokenScores` of the response tokens (``input_ids`` /
        ``attention_mask`` are the left-padded queries). Without: the legacy trl forward."""
        if responses is not None:
            queries = kwargs.pop("input_ids", args[0] if args else None)
            query_mask = kwargs.pop("attention_mask", args[1] if len(args) > 1 else None)
            if with_values and self.v_head is None:
                raise RuntimeError("values requested from a model without a value head")
            return self._score(queries, query_mask, responses, response_mask, entropy, with_values)
        return self._legacy_forward(*args, **kwargs)

    def _lm_forward(self, logits_to_keep: int = 0, **inputs):
        """The legacy forward on the wrapped LM: ``(logits, loss, values)``, cut to the last
        ``logits_to_keep`` positions when asked (values from the last hidden state)."""
        out = self.pretrained_model(**inputs, output_hidden_states=True, use_cache=False, return_dict=True)
        hidden = (out.decoder_hidden_states if self.is_encoder_decoder else out.hidden_states)[-1]
        logits = out.logits
        if logits_to_keep:
            hidden, logits = hidden[:, -logits_to_keep:], logits[:, -logits_to_keep:]
        return logits, out.loss, (None if self.v_head is None else self._values(hidden))

    def _values(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.v_head(hidden.to(self.v_head.weight.dtype)).squeeze(-1)

    def _scores_from_hidden(self, hidden, responses, entropy: str, with_values: bool) -> TokenScores:
        """Logprobs (+ entropy, values) from the hidden states that predict each response token;
        logits are formed a chunk of positions at a time (:func:`algos.chunked_logprobs`)."""
        logprobs, ent = algos.chunked_logprobs(
            hidden, self._head, responses, chunk_tokens=self.chunk_tokens, entropy=entropy
        )
        return TokenScores(logprobs, ent, self._values(hidden).float() if with_values else None)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head (and the final-logit transforms some architectures apply after it)."""
        config = self.config
        logits = self.hf_model.get_output_embeddings()(hidden)
        cap = getattr(config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        scale = getattr(config, "logit_scale", None)
        if isinstance(scale, (int, float)) and scale != 1:
            logits = logits * scale
        return logits

    def _self_check_tolerance(self) -> float:
        """Tolerance of the start-up checks between two ways of scoring the same tokens: 16-bit weights
        (DeepSpeed bf16/fp16, a model loaded in half precision) round the two paths differently."""
        return 1e-4 if self.hf_model.get_output_embeddings().weight.dtype == torch.float32 else 5e-2

    @torch.no_grad()
    def check_scoring_matches_logits(self) -> None:
        """The hidden-state + head path must reproduce the model's own logits (it would not for an
        architecture with an unknown transform around the LM head): checked once on 6 tokens."""
        was_training = self.training
        self.eval()
        try:
            ids = torch.randint(3, self.config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(0))
            ids = ids.to(next(self.parameters()).device)
            ones = torch.ones_like(ids)
            q, r = ids[:, :3], ids[:, 3:]
            # _score, not self(): once prepared under mixed precision, accelerate runs forward() under
            # autocast, while the model's own logits below are computed in the weights' dtype.
            scored = self._score(q, ones[:, :3], r, ones[:, 3:], entropy="none", with_values=False)
            expected = algos.logprobs_from_logits(self._model_logits(q, r), r)
            tol = self._self_check_tolerance()
            if not torch.allclose(scored.logprobs, expected, rtol=tol, atol=tol):
                error = (scored.logprobs - expected).abs().max().item()
                raise ModelLoadError(
                    f"{type(self.hf_model).__name__}: logprobs from the last hidden state and the output embeddings "
                    f"differ from the model's logits (max error {error:.3g}); this architecture is not supported"
                )
        finally:
            self.train(was_training)

    @torch.no_grad()
    def enable_packing(self) -> None:
        """Score on packed rows from now on (``ppo.packing``), once a check shows the architecture keeps
        packed samples apart: three samples, two of them sharing a row, must score as padded."""
        if self.is_encoder_decoder:
            raise ModelLoadError("ppo.packing needs a decoder-only model")
        was_training = self.training
        self.eval()
        try:
            gen = torch.Generator().manual_seed(0)
            device = next(self.parameters()).device
            ids = torch.randint(3, self.config.vocab_size, (3, 8), generator=gen).to(device)
            q_mask = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 1], [0, 1, 1, 1]], device=device)
            r_mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 0, 0, 0]], device=device)  # lengths 6, 2, 4
            q, r = ids[:, :4], ids[:, 4:]
            self.packing = False
            padded = self._score(q, q_mask, r, r_mask, entropy="none", with_values=False).logprobs
            self.packing = True
            packed = self._score(q, q_mask, r, r_mask, entropy="none", with_values=False).logprobs
        finally:
            self.train(was_training)
        error = ((packed - padded) * r_mask).abs().max().item()
        if error > self._self_check_tolerance():
            self.packing = False
            raise ModelLoadError(
                f"{type(self.hf_model).__name__}: packed samples score differently from padded ones (max error "
                f"{error:.3g}); its attention does not keep packed sequences apart, set ppo.packing false"
            )

    # ------------------------------------------------------------------ HF-like surface

    def generate(self, *args, **kwargs):
        return self.pretrained_model.generate(*args, **kwargs)

    def num_parameters(self, only_trainable: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    def save_pretrained(self, save_directory: str | os.PathLike, state_dict: dict | None = None, **kwargs) -> None:
        """Save the LM as a normal HF directory (a LoRA policy: merged, plus ``adapter/``), and
        ``value_head.pt`` beside it when the model has a value head."""
        save_directory = Path(save_directory)
        state_dict = self.state_dict() if state_dict is None else state_dict
        lm_state = strip_prefix(state_dict, "pretrained_model.")
        if self.is_peft_model:
            save_merged_lora(self.pretrained_model, lm_state, save_directory, **kwargs)
        else:
            self.pretrained_model.save_pretrained(save_directory, state_dict=lm_state, **kwargs)
        if self.v_head is not None:
            head = strip_prefix(state_dict, "v_head.")
            torch.save({k: v.detach().cpu() for k, v in head.items()}, save_directory / VALUE_HEAD_FILE)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | PreTrainedModel, value_head: bool = True, **kwargs):
        """Load an HF LM (path, hub name or model object); restore a saved value head if present."""
        if isinstance(name_or_path, PreTrainedModel) or is_peft_model(name_or_path):
            return cls(name_or_path, value_head=value_head)
        model = cls(cls._load_lm(str(name_or_path), **kwargs), value_head=value_head)
        restore_value_head(model.v_head, Path(str(name_or_path)))
        return model


class CausalLMWithValueHead(ValueHeadModel):
    """A causal LM with a value head. Legacy forward: ``(logits, loss, values)``; ``logits_to_keep=k``
    computes logits (and values) for the last ``k`` positions only."""

    _load_lm = staticmethod(load_causal_lm)

    def _legacy_forward(
        self, input_ids=None, attention_mask=None, position_ids=None, labels=None, logits_to_keep: int = 0, **kwargs
    ):
        supported = logits_to_keep and "logits_to_keep" in inspect.signature(self.hf_model.forward).parameters
        extra = {"logits_to_keep": logits_to_keep} if supported else {}
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, labels=labels)
        return self._lm_forward(logits_to_keep, **inputs, **extra, **kwargs)

    def _score(self, queries, query_mask, responses, response_mask, entropy: str, with_values: bool) -> TokenScores:
        """Sequence layout ``[query (left-padded) | response (right-padded)]``; position ids follow the
        attention mask, so the amount of padding never changes a result."""
        input_ids = torch.cat([queries, responses], dim=1)
        attention_mask = torch.cat([query_mask, response_mask], dim=1)
        position_ids = (attention_mask.cumsum(1) - 1).clamp_min(0)
        body = self.hf_model.base_model
        layout = packed_layout(attention_mask) if self.packing else None
        if layout is not None:
            hidden = packed_hidden(body, input_ids, position_ids, layout)
        else:
            hidden = body(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state
        T = responses.shape[1]
        hidden = hidden[:, -T - 1 : -1]  # the position before each response token predicts it
        return self._scores_from_hidden(hidden, responses, entropy, with_values)

    def _model_logits(self, queries, responses) -> torch.Tensor:
        ids = torch.cat([queries, responses], dim=1)
        T = responses.shape[1]
        return self.pretrained_model(input_ids=ids, use_cache=False).logits[:, -T - 1 : -1]


def strip_prefix(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _hidden_size(config) -> int:
    for name in ("hidden_size", "n_embd", "d_model", "word_embed_proj_dim"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise ModelLoadError(f"cannot find the hidden size in config of type {type(config).__name__}")


def restore_value_head(head: nn.Linear | None, directory: Path) -> bool:
    """Load ``directory/value_head.pt`` (as :meth:`ValueHeadModel.save_pretrained` writes it) into
    ``head``; False when there is no head or no such file (the head keeps its initialisation)."""
    file = directory / VALUE_HEAD_FILE
    if head is None or not file.is_file():
        return False
    head.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
    return True
