"""An encoder-decoder LM (T5, BART, ...) plus a scalar value head on the decoder's last hidden state.

For PPO the query is the encoder input and the response is the decoder output: logprobs and values
are taken over decoder tokens, with the decoder fed ``[decoder start] + response[:-1]`` (teacher
forcing), exactly what ``generate`` sampled from.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForSeq2SeqLM, PreTrainedModel

from ..models import ModelLoadError, TokenScores, ValueHeadModel, load_pretrained


def load_seq2seq_lm(name_or_path: str, **kwargs) -> PreTrainedModel:
    return load_pretrained(AutoModelForSeq2SeqLM, "a seq2seq language model", name_or_path, **kwargs)


class Seq2SeqLMWithValueHead(ValueHeadModel):
    """A Hugging Face seq2seq LM plus a value head: one value per decoder position.

    Legacy forward ``(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask)`` returns
    ``(logits, loss, values)`` over the decoder positions (``logits_to_keep=k``: the last ``k``);
    ``generate`` returns decoder token ids starting with the decoder start token, as the wrapped model does.
    """

    is_encoder_decoder = True
    _load_lm = staticmethod(load_seq2seq_lm)

    def __init__(self, pretrained_model: PreTrainedModel, value_head: bool = True, logits_chunk_tokens: int = 0):
        config = getattr(pretrained_model, "config", None)
        if not getattr(config, "is_encoder_decoder", False):
            raise ModelLoadError(
                f"{type(pretrained_model).__name__} is not an encoder-decoder model; use CausalLMWithValueHead"
            )
        super().__init__(pretrained_model, value_head, logits_chunk_tokens)

    def _legacy_forward(
        self,
        input_ids=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        labels=None,
        logits_to_keep: int = 0,
        **kwargs,
    ):
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        decoder = dict(decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask)
        return self._lm_forward(logits_to_keep, **inputs, **decoder, **kwargs)

    def _decoder_inputs(self, responses: torch.Tensor, response_mask: torch.Tensor):
        start = self.config.decoder_start_token_id
        if start is None:
            raise ModelLoadError(f"{type(self.hf_model).__name__} has no decoder_start_token_id")
        first = torch.full_like(responses[:, :1], start)
        return torch.cat([first, responses[:, :-1]], 1), torch.cat([torch.ones_like(first), response_mask[:, :-1]], 1)

    def _score(self, queries, query_mask, responses, response_mask, entropy: str, with_values: bool) -> TokenScores:
        hf = self.hf_model
        decoder_ids, decoder_mask = self._decoder_inputs(responses, response_mask)
        encoded = hf.get_encoder()(input_ids=queries, attention_mask=query_mask).last_hidden_state
        hidden = hf.get_decoder()(
            input_ids=decoder_ids,
            attention_mask=decoder_mask,
            encoder_hidden_states=encoded,
            encoder_attention_mask=query_mask,
            use_cache=False,
        ).last_hidden_state
        return self._scores_from_hidden(hidden, responses, entropy, with_values)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """T5 rescales the decoder output when the LM head is tied to the embeddings; BART adds a
        final logits bias. The self-check in ``check_scoring_matches_logits`` covers the rest."""
        config = self.config
        if config.model_type in ("t5", "mt5", "umt5") and config.tie_word_embeddings:
            hidden = hidden * (config.d_model**-0.5)
        logits = super()._head(hidden)
        bias = getattr(self.hf_model, "final_logits_bias", None)
        return logits + bias.to(logits.dtype) if isinstance(bias, torch.Tensor) else logits

    def _model_logits(self, queries, responses) -> torch.Tensor:
        decoder_ids, _ = self._decoder_inputs(responses, torch.ones_like(responses))
        return self.pretrained_model(input_ids=queries, decoder_input_ids=decoder_ids, use_cache=False).logits
