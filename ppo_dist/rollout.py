"""Generation on a process's shard, micro-batch planning, and scoring passes in micro-batches.

Sequence layout used everywhere: ``[query, left-padded to Lq | response, right-padded to Lr]``.
Position ids come from the attention mask, so the amount of padding never changes a result.
A response is valid up to and including its first EOS; tokens after it are padding.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationConfig

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


def ends_with_eos(responses: torch.Tensor, response_mask: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """(B,) bool: the last valid token of each right-padded response is EOS (the response ended
    within max_new_tokens). With pad == EOS the mask alone cannot tell that from running out."""
    if responses.shape[1] == 0:
        return torch.zeros(responses.shape[0], dtype=torch.bool, device=responses.device)
    last = (response_mask.sum(1) - 1).clamp(min=0)
    has_tokens = response_mask.sum(1) > 0
    return has_tokens & (responses.gather(1, last.unsqueeze(1)).squeeze(1) == eos_token_id)


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
    """Samples as padded tensors. ``responses`` right-padded; ``response_mask`` 1 up to EOS."""

    queries: torch.Tensor  # (B, Lq) left-padded
    query_mask: torch.Tensor  # (B, Lq)
    responses: torch.Tensor  # (B, Lr)
    response_mask: torch.Tensor  # (B, Lr)

    def __len__(self) -> int:
        return self.responses.shape[0]

    def select(self, idx: torch.Tensor) -> Rollout:
        """Rows ``idx``, with columns that are padding in every selected row dropped."""
        q, qm, r, rm = self.queries[idx], self.query_mask[idx], self.responses[idx], self.response_mask[idx]
        q_start = int((qm.sum(0) > 0).nonzero()[0]) if qm.any() else qm.shape[1] - 1
        r_end = max(1, int(rm.sum(1).max())) if len(rm) else 1
        return Rollout(q[:, q_start:], qm[:, q_start:], r[:, :r_end], rm[:, :r_end])

    def lengths(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query_mask.sum(1), self.response_mask.sum(1)

    def score(self, model, **kwargs):
        """``model``'s :class:`~ppo_dist.models.TokenScores` for these responses (one forward)."""
        return model(
            input_ids=self.queries,
            attention_mask=self.query_mask,
            responses=self.responses,
            response_mask=self.response_mask,
            **kwargs,
        )


@torch.no_grad()
def generate(
    model, query_ids: list[torch.Tensor], tokenizer, gen_config: GenerationConfig, chunk_size: int = 0, **kwargs
) -> Rollout:
    """Batched sampling with KV cache on left-padded prompts; ``chunk_size`` prompts per call (0 = all).
    ``kwargs`` go to ``model.generate`` (e.g. ``logits_processor``)."""
    device = next(model.parameters()).device
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    chunk_size = chunk_size or len(query_ids)
    pad = tokenizer.pad_token_id
    queries, query_mask = (t.to(device) for t in left_pad(query_ids, pad))
    pieces = []
    for start in range(0, len(query_ids), chunk_size):
        q, m = queries[start : start + chunk_size], query_mask[start : start + chunk_size]
        out = model.generate(input_ids=q, attention_mask=m, generation_config=gen_config, **kwargs)
        # A decoder-only model returns prompt + response; an encoder-decoder one, start token + response.
        pieces.append(out[:, 1:] if encoder_decoder else out[:, q.shape[1] :])
    width = max(p.shape[1] for p in pieces)
    raw = torch.cat([F.pad(p, (0, width - p.shape[1]), value=pad) for p in pieces])
    eos = gen_config.eos_token_id if isinstance(gen_config.eos_token_id, int) else tokenizer.eos_token_id
    responses, response_mask = truncate_at_eos(raw, eos, pad)
    return Rollout(queries, query_mask, responses, response_mask)


# ---------------------------------------------------------------------------------------- micro-batches


def plan_micro_batches(
    query_lengths: torch.Tensor, response_lengths: torch.Tensor, *, max_samples: int, max_tokens: int = 0
) -> list[torch.Tensor]:
    """Split positions ``0..n-1`` into micro-batches.

    ``max_tokens == 0``: consecutive runs of ``max_samples``. Otherwise token-budget packing: the
    samples are sorted by length (longest first) and each micro-batch takes samples while its padded
    size ``rows x (longest query + longest response)`` stays within ``max_tokens`` (a sample longer
    than the budget goes alone). Sorting keeps similar lengths together, so little is padding.
    """
    n = len(response_lengths)
    if max_tokens <= 0:
        return [torch.arange(s, min(s + max_samples, n)) for s in range(0, n, max_samples)]
    total = query_lengths + response_lengths
    order = torch.sort(total, descending=True, stable=True).indices.tolist()
    q, r = query_lengths.tolist(), response_lengths.tolist()
    bins: list[list[int]] = []
    width_q = width_r = 0
    for i in order:
        wq, wr = max(width_q, q[i]), max(width_r, r[i])
        if bins and (len(bins[-1]) + 1) * (wq + wr) <= max_tokens:
            bins[-1].append(i)
            width_q, width_r = wq, wr
        else:
            bins.append([i])
            width_q, width_r = q[i], r[i]
    return [torch.tensor(b, dtype=torch.long) for b in bins]


def split_to_count(micro_batches: list[torch.Tensor], count: int) -> list[torch.Tensor]:
    """Split the largest micro-batches until there are ``count`` of them (each stays non-empty and
    within its budget); used when every process must run the same number of micro-batches."""
    out = list(micro_batches)
    while len(out) < count:
        i = max(range(len(out)), key=lambda k: len(out[k]))
        if len(out[i]) < 2:
            raise ValueError(f"cannot split {sum(map(len, out))} samples into {count} micro-batches")
        half = len(out[i]) // 2
        out[i : i + 1] = [out[i][:half], out[i][half:]]
    return out


@torch.no_grad()
def score_in_micro_batches(
    model, rollout: Rollout, micro_batches: list[torch.Tensor], *, with_values: bool, context=contextlib.nullcontext
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logprobs (and values) of every response of ``rollout``, one micro-batch per forward.

    Returns ``(logprobs (B, Lr), values (B, Lr) | None)`` aligned with ``rollout.responses``; 0 on
    padding. ``context`` wraps each forward (e.g. the LoRA policy's adapter switched off).
    """
    B, Lr = rollout.responses.shape
    device = rollout.responses.device
    logprobs = torch.zeros(B, Lr, device=device)
    values = torch.zeros(B, Lr, device=device) if with_values else None
    for idx in micro_batches:
        idx = idx.to(device)
        part = rollout.select(idx)
        with context():
            out = part.score(model, with_values=with_values)
        n = out.logprobs.shape[1]
        mask = part.response_mask[:, :n]
        logprobs[idx, :n] = out.logprobs.float() * mask
        if with_values:
            values[idx, :n] = out.values.float() * mask
    return logprobs, values
