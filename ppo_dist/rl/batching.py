"""Micro-batch planning: which samples go into one forward (fixed counts or a token budget).

Under DeepSpeed every process must run the same number of forwards/backwards (ZeRO gathers
parameters and reduces gradients inside each of them): :func:`equal_counts` splits micro-batches
until every process has as many as the one with the most.
"""

from __future__ import annotations

import torch

from ..runtime import distributed, zero


def plan_micro_batches(
    query_lengths: torch.Tensor,
    response_lengths: torch.Tensor,
    *,
    max_samples: int,
    max_tokens: int = 0,
    packed: bool = False,
) -> list[torch.Tensor]:
    """Split positions ``0..n-1`` into micro-batches.

    ``max_tokens == 0``: consecutive runs of ``max_samples``. Otherwise token-budget packing: the
    samples are sorted by length (longest first) and each micro-batch takes samples while its padded
    size ``rows x (longest query + longest response)`` stays within ``max_tokens`` (a sample longer
    than the budget goes alone). Sorting keeps similar lengths together, so little is padding.
    ``packed`` (``ppo.packing``: the forward packs the samples end to end): the budget counts real
    tokens, the sum of the samples' lengths.
    """
    n = len(response_lengths)
    if max_tokens <= 0:
        return [torch.arange(s, min(s + max_samples, n)) for s in range(0, n, max_samples)]
    total = query_lengths + response_lengths
    order = torch.sort(total, descending=True, stable=True).indices.tolist()
    q, r = query_lengths.tolist(), response_lengths.tolist()
    bins: list[list[int]] = []
    width_q = width_r = used = 0  # the open micro-batch's longest query / response, its real tokens
    for i in order:
        wq, wr = max(width_q, q[i]), max(width_r, r[i])
        if bins:
            size = used + q[i] + r[i] if packed else (len(bins[-1]) + 1) * (wq + wr)
            if size <= max_tokens:
                bins[-1].append(i)
                width_q, width_r, used = wq, wr, used + q[i] + r[i]
                continue
        bins.append([i])
        width_q, width_r, used = q[i], r[i], q[i] + r[i]
    return [torch.tensor(b, dtype=torch.long) for b in bins]


def planned_widths(query_lengths: torch.Tensor, response_lengths: torch.Tensor, rows: torch.Tensor) -> tuple[int, int]:
    """The longest query and response among ``rows``, from host-side lengths: what
    :meth:`~ppo_dist.rl.rollout.Rollout.select` is given so that it reads nothing back from the device."""
    rows = rows.cpu()
    if not len(rows):
        return 0, 0
    return int(query_lengths[rows].max()), int(response_lengths[rows].max())


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


def equal_counts(accelerator, micro_batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """``micro_batches`` split (:func:`split_to_count`) to the largest count of any process under
    DeepSpeed (one small all-reduce); unchanged otherwise."""
    return equal_counts_all(accelerator, [micro_batches])[0]


def equal_counts_all(accelerator, plans: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    """:func:`equal_counts` for several mini-batches at once: one all-reduce of their counts."""
    if not zero.zero_stage(accelerator):
        return plans
    local = torch.tensor([float(len(m)) for m in plans], device=accelerator.device)
    counts = distributed.reduce_max(accelerator, local).tolist()
    return [split_to_count(m, int(c)) for m, c in zip(plans, counts, strict=True)]
