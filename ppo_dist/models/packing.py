"""Padding-free forwards: the samples of a micro-batch packed end to end into rows.

A scoring forward sees ``[query (left-padded) | response (right-padded)]`` rows, so a batch of uneven
lengths spends most of its FLOPs on padding. Packed, each sample's real tokens are laid end to end in
rows as wide as the longest sample (first-fit decreasing), with ``position_ids`` restarting at 0 for
every sample and no attention mask: transformers then builds the block-diagonal causal mask from the
position ids (sdpa / eager), or runs flash-attention's variable-length kernel, so no token attends
across samples. The hidden states go back to the padded layout, so everything after the body (heads,
logprobs, values, losses) is the padded path's.

A micro-batch whose packing would not shrink it by :data:`MIN_SAVING` of its padded slots (samples of
about equal length, or each longer than half the longest) runs padded: the packed rows would cost the same
matmuls plus the index copies and the block-diagonal mask.

Models whose attention does not read packed position ids would mix samples silently;
:meth:`~ppo_dist.models.value_head.ValueHeadModel.enable_packing` compares the two layouts once when
``ppo.packing`` is on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_SAVING = 0.1  # pack only when it removes at least this share of the padded layout's slots


@dataclass(frozen=True)
class PackedLayout:
    """Where every real token of a ``(B, L)`` batch lands in ``rows x width`` packed rows."""

    rows: int
    width: int
    source: torch.Tensor  # (N,) flat indices of the real tokens in the padded (B * L) layout
    dest: torch.Tensor  # (N,) their flat indices in the packed (rows * width) layout

    @property
    def fill(self) -> float:
        """Real tokens over packed slots (1.0: no padding left)."""
        return len(self.dest) / (self.rows * self.width)


def first_fit_rows(lengths: list[int], width: int) -> tuple[list[int], list[int], int]:
    """Row and offset of each sample (first-fit decreasing into rows of ``width`` tokens) and the row count."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    row_of, offset_of = [0] * len(lengths), [0] * len(lengths)
    used: list[int] = []
    for i in order:
        row = next((r for r, u in enumerate(used) if u + lengths[i] <= width), len(used))
        if row == len(used):
            used.append(0)
        row_of[i], offset_of[i] = row, used[row]
        used[row] += lengths[i]
    return row_of, offset_of, len(used)


def packed_layout(mask: torch.Tensor) -> PackedLayout | None:
    """The packing of the real (``mask`` 1) tokens of each row of ``mask`` (B, L), rows as wide as the
    longest sample; None when it would not remove :data:`MIN_SAVING` of the ``B x L`` slots (nothing
    else is computed then). One host read of the lengths."""
    real = mask.bool()
    lengths = real.sum(1)
    width = int(lengths.max())
    row_of, offset_of, rows = first_fit_rows(lengths.tolist(), width)
    if rows * width > (1 - MIN_SAVING) * mask.numel():
        return None
    device = mask.device
    starts = torch.tensor([r * width + o for r, o in zip(row_of, offset_of, strict=True)], device=device)
    # The real tokens in row-major order of the padded layout; each sample's are contiguous in the packed one.
    source = real.reshape(-1).nonzero().squeeze(1)
    first = torch.cumsum(lengths, 0) - lengths
    sample = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)
    dest = starts[sample] + torch.arange(len(source), device=device) - first[sample]
    return PackedLayout(rows=rows, width=width, source=source, dest=dest)


def packed_hidden(body, input_ids: torch.Tensor, position_ids: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """``body``'s last hidden state for a padded ``(B, L)`` batch, computed on the packed rows of ``layout``
    (:func:`packed_layout` of its mask); ``(B, L, d)`` with zeros at the padding. ``position_ids`` are the
    padded layout's (0 at each sample's first token)."""
    B, L = input_ids.shape
    slots = layout.rows * layout.width
    # Free slots at a row's end get position 0 each: every one is a sequence of its own, seen by nobody.
    ids = input_ids.new_zeros(slots).index_copy(0, layout.dest, input_ids.reshape(-1)[layout.source])
    pos = position_ids.new_zeros(slots).index_copy(0, layout.dest, position_ids.reshape(-1)[layout.source])
    out = body(
        input_ids=ids.view(layout.rows, layout.width),
        position_ids=pos.view(layout.rows, layout.width),
        attention_mask=None,
        use_cache=False,
    )
    hidden = out.last_hidden_state.reshape(slots, -1)
    padded = hidden.new_zeros(B * L, hidden.shape[-1]).index_copy(0, layout.source, hidden[layout.dest])
    return padded.view(B, L, -1)
