"""A rollout: prompts and sampled responses as padded tensors, whichever engine sampled them.

Sequence layout used everywhere: ``[query, left-padded to Lq | response, right-padded to Lr]``.
Position ids come from the attention mask, so the amount of padding never changes a result.
A response is valid up to and including its first EOS; tokens after it are padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


def decode_responses(tokenizer, rollout: Rollout) -> list[str]:
    """The completions' text: each response up to and including EOS, special tokens dropped."""
    pad = tokenizer.pad_token_id
    valid_tokens = rollout.responses * rollout.response_mask + (1 - rollout.response_mask) * pad
    return tokenizer.batch_decode(valid_tokens, skip_special_tokens=True)


def ends_with_eos(responses: torch.Tensor, response_mask: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """(B,) bool: the last valid token of each right-padded response is EOS (the response ended
    within max_new_tokens). With pad == EOS the mask alone cannot tell that from running out."""
    if responses.shape[1] == 0:
        return torch.zeros(responses.shape[0], dtype=torch.bool, device=responses.device)
    last = (response_mask.sum(1) - 1).clamp(min=0)
    has_tokens = response_mask.sum(1) > 0
    return has_tokens & (responses.gather(1, last.unsqueeze(1)).squeeze(1) == eos_token_id)


@dataclass
class Rollout:
    """Samples as padded tensors. ``responses`` right-padded; ``response_mask`` 1 up to EOS."""

    queries: torch.Tensor  # (B, Lq) left-padded
    query_mask: torch.Tensor  # (B, Lq)
    responses: torch.Tensor  # (B, Lr)
    response_mask: torch.Tensor  # (B, Lr)
    # (B, Lr) float32: the sampler's own logprob of each response token, from an engine that reports
    # it (an engine holding its own copy of the weights); None for HF generate, whose model is the policy.
    engine_logprobs: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.responses.shape[0]

    def select(self, idx: torch.Tensor, widths: tuple[int, int] | None = None) -> Rollout:
        """Rows ``idx``, with columns that are padding in every selected row dropped. ``widths``: the
        rows' longest query and response, where the caller knows them (then nothing is read back from
        the device); otherwise they are read from the masks."""
        q, qm, r, rm = self.queries[idx], self.query_mask[idx], self.responses[idx], self.response_mask[idx]
        if widths is None:
            q_start = int((qm.sum(0) > 0).nonzero()[0]) if qm.any() else qm.shape[1] - 1
            r_end = max(1, int(rm.sum(1).max())) if len(rm) else 1
        else:  # queries are left-padded: the longest one starts the kept columns
            q_start, r_end = min(qm.shape[1] - widths[0], qm.shape[1] - 1), max(1, widths[1])
        engine = None if self.engine_logprobs is None else self.engine_logprobs[idx, :r_end].contiguous()
        # Contiguous, so a compiled forward (train.compile) sees the strides of the shapes it compiled for.
        q, qm, r, rm = (t.contiguous() for t in (q[:, q_start:], qm[:, q_start:], r[:, :r_end], rm[:, :r_end]))
        return Rollout(q, qm, r, rm, engine)

    def lengths(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query_mask.sum(1), self.response_mask.sum(1)
