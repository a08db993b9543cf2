"""Generation on a process's shard, and logprob/value passes in micro-batches.

Sequence layout used everywhere: ``[query, left-padded to Lq | response, right-padded to Lr]``.
Position ids come from the attention mask, so the amount of padding never changes a result.
A response is valid up to and including its first EOS; tokens after it are padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationConfig

from . import algos
from .config import RolloutConfig


def left_pad(seqs: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """list of 1-D id tensors -> (ids (B, L) left-padded, attention mask (B, L))."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, L - len(s) :] = s
            mask[i, L - len(s) :] = 1
    return ids, mask


def right_pad(seqs: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


def truncate_at_eos(responses: torch.Tensor, eos_token_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each row after its first EOS. (B, T) -> (responses with pad after EOS, mask (B, T)).

    The EOS itself stays valid: it is an action of the policy and must be learned.
    """
    is_eos = responses == eos_token_id
    after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0  # strictly after the first EOS
    mask = (~after_eos).long()
    return responses.masked_fill(after_eos, pad_id), mask


def make_generation_config(cfg: RolloutConfig, tokenizer, max_new_tokens: int | None = None) -> GenerationConfig:
    sampling = dict(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p) if cfg.do_sample else {}
    return GenerationConfig(
        max_new_tokens=max_new_tokens or cfg.max_new_tokens,
        do_sample=cfg.do_sample,
        use_cache=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **sampling,
    )


@dataclass
class Rollout:
    """One process's generated samples. ``responses`` right-padded; ``response_mask`` 1 up to EOS."""

    queries: torch.Tensor  # (B, Lq) left-padded
    query_mask: torch.Tensor  # (B, Lq)
    responses: torch.Tensor  # (B, Lr)
    response_mask: torch.Tensor  # (B, Lr)


def ends_with_eos(responses: torch.Tensor, response_mask: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """(B,) bool: the last valid token of each right-padded response is EOS (the response ended
    within max_new_tokens). With pad == EOS the mask alone cannot tell that from running out."""
    if responses.shape[1] == 0:
        return torch.zeros(responses.shape[0], dtype=torch.bool, device=responses.device)
    last = (response_mask.sum(1) - 1).clamp(min=0)
    has_tokens = response_mask.sum(1) > 0
    return has_tokens & (responses.gather(1, last.unsqueeze(1)).squeeze(1) == eos_token_id)


@torch.no_grad()
def generate(
    model, query_ids: list[torch.Tensor], tokenizer, gen_config: GenerationConfig, chunk_size: int = 0
) -> Rollout:
    """Batched sampling with KV cache on left-padded prompts; ``chunk_size`` prompts per call (0 = all)."""
    device = next(model.parameters()).device
    chunk_size = chunk_size or len(query_ids)
    pad = tokenizer.pad_token_id
    queries, query_mask = (t.to(device) for t in left_pad(query_ids, pad))
    pieces = []
    for start in range(0, len(query_ids), chunk_size):
        q, m = queries[start : start + chunk_size], query_mask[start : start + chunk_size]
        out = model.generate(input_ids=q, attention_mask=m, generation_config=gen_config)
        pieces.append(out[:, q.shape[1] :])
    width = max(p.shape[1] for p in pieces)
    raw = torch.cat([F.pad(p, (0, width - p.shape[1]), value=pad) for p in pieces])
    responses, response_mask = truncate_at_eos(raw, tokenizer.eos_token_id, pad)
    return Rollout(queries, query_mask, responses, response_mask)


def trim_padding(queries, query_mask, responses, response_mask):
    """Drop columns that are padding in every row (left of the queries, right of the responses)."""
    q_start = int((query_mask.sum(0) > 0).nonzero()[0]) if query_mask.any() else query_mask.shape[1] - 1
    r_end = max(1, int(response_mask.sum(1).max()))
    return queries[:, q_start:], query_mask[:, q_start:], responses[:, :r_end], response_mask[:, :r_end]


def forward_response(model, queries, query_mask, responses, response_mask, with_entropy: bool = False):
    """Logprobs of the response tokens and values before each of them, padding trimmed.

    Returns (logprobs, values, entropy|None), each ``(B, Lr_trimmed)``; callers pad back if needed.
    ``model`` is a CausalLMWithValueHead (values returned) or a plain causal LM (values None).
    """
    queries, query_mask, responses, response_mask = trim_padding(queries, query_mask, responses, response_mask)
    input_ids = torch.cat([queries, responses], dim=1)
    attention_mask = torch.cat([query_mask, response_mask], dim=1)
    position_ids = (attention_mask.cumsum(1) - 1).clamp_min(0)
    keep = responses.shape[1] + 1
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=keep)
    if isinstance(out, tuple):  # CausalLMWithValueHead: (logits, loss, values)
        logits, values = out[0], out[2][:, :-1]
    else:
        logits, values = out.logits[:, -keep:], None
    logits = logits[:, :-1]
    logprobs = algos.logprobs_from_logits(logits, responses)
    entropy = algos.entropy_from_logits(logits) if with_entropy else None
    return logprobs, values, entropy


@torch.no_grad()
def batched_forward(model, queries, query_mask, responses, response_mask, micro_batch_size: int, with_values: bool):
    """Old-policy (or reference) logprobs and values over a batch, ``micro_batch_size`` rows at a time.

    Returns ``(logprobs (B, Lr), values (B, Lr) | None)`` aligned with ``responses``; 0 on padding.
    """
    B, Lr = responses.shape
    logprobs = torch.zeros(B, Lr, device=responses.device)
    values = torch.zeros(B, Lr, device=responses.device) if with_values else None
    for s in range(0, B, micro_batch_size):
        sl = slice(s, s + micro_batch_size)
        lp, v, _ = forward_response(model, queries[sl], query_mask[sl], responses[sl], response_mask[sl])
        n = lp.shape[1]
        logprobs[sl, :n] = lp.float() * response_mask[sl, :n]
        if with_values:
            values[sl, :n] = v.float() * response_mask[sl, :n]
    return logprobs, values
