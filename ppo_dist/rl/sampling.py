"""Sampled batches, and the group selection of dynamic sampling (``rollout.dynamic_sampling``).

A :class:`Sampled` is one batch of prompts sampled and scored on this process. Dynamic sampling
(DAPO, Yu et al. 2025, sec. 3.2) gathers every round (:class:`GatheredRound`: each process then holds
all samples, in global order), keeps the groups whose rewards are not all equal, and gives each
process its contiguous share of the chosen groups (:func:`local_share`) -- so the choice is the same
on every process and does not depend on how many there are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import algos
from ..data import PromptStream
from ..runtime import distributed
from .rollout import Rollout, decode_responses, left_pad, right_pad


@dataclass
class Sampled:
    """One batch of prompts sampled and scored by this process."""

    prompts: list[str]
    rollout: Rollout
    completions: list[str]
    components: dict[str, torch.Tensor]  # the reward's components, "score" (and "valid"), (B_local,) each
    timings: dict[str, float]
    trained: torch.Tensor | None = None  # (B_local,) bool: samples that enter the loss; None = all


@dataclass
class GatheredRound:
    """One sampled batch, gathered: every sample of every process, in global order, unpadded."""

    prompts: list[str]
    queries: list[torch.Tensor]
    responses: list[torch.Tensor]
    engine_logprobs: list[torch.Tensor] | None
    components: dict[str, torch.Tensor]  # (B,) each
    informative: torch.Tensor  # (G,) bool: the group's rewards are not all equal
    group_size: int
    timings: dict[str, float]

    @classmethod
    def of(cls, accelerator, sampled: Sampled, stream: PromptStream, position: int, group_size: int, pad: int):
        """Gather ``sampled`` (drawn from stream ``position`` on); every process must call it."""
        acc, r = accelerator, sampled.rollout
        queries = distributed.gather_padded(acc, r.queries, pad, pad_first=True)
        query_mask = distributed.gather_padded(acc, r.query_mask, 0, pad_first=True)
        responses = distributed.gather_padded(acc, r.responses, pad)
        response_mask = distributed.gather_padded(acc, r.response_mask)
        engine = None if r.engine_logprobs is None else distributed.gather_padded(acc, r.engine_logprobs)
        names = list(sampled.components)
        local = torch.stack([sampled.components[k].float().to(acc.device) for k in names], dim=1)
        components = dict(zip(names, distributed.gather_1d(acc, local).unbind(1), strict=True))
        components["valid"] = components.get("valid", torch.ones_like(components["score"])).bool()
        q_len, r_len = query_mask.sum(1).tolist(), response_mask.sum(1).tolist()
        rows = stream.indices_at(position)  # the prompts every process drew from, in global order
        texts = list(stream.dataset.select(rows)[stream.prompt_column])
        group = torch.arange(len(q_len), device=acc.device) // group_size
        _, std, count = algos.group_stats(components["score"].nan_to_num(), group, components["valid"])
        first = std[::group_size], count[::group_size]  # one value per group (every member holds it)
        return cls(
            prompts=[texts[i // group_size] for i in range(len(q_len))],
            queries=[q[len(q) - n :] for q, n in zip(queries, q_len, strict=True)],
            responses=[x[:n] for x, n in zip(responses, r_len, strict=True)],
            engine_logprobs=None if engine is None else [x[:n] for x, n in zip(engine, r_len, strict=True)],
            components=components,
            informative=(first[1] > 1) & (first[0] > 0),
            group_size=group_size,
            timings=sampled.timings,
        )


def choose_groups(rounds: list[GatheredRound], num_groups: int) -> tuple[list[tuple[int, int]], int]:
    """``num_groups`` groups as ``(round, group)``: the informative ones in sampling order first, then,
    when there are too few, tied ones to fill the batch. Returns them and how many are informative."""
    informative = [(r, g) for r, rnd in enumerate(rounds) for g in rnd.informative.nonzero().flatten().tolist()]
    tied = [(r, g) for r, rnd in enumerate(rounds) for g in (~rnd.informative).nonzero().flatten().tolist()]
    chosen = informative[:num_groups]
    return chosen + tied[: num_groups - len(chosen)], len(chosen)


def local_share(
    rounds: list[GatheredRound],
    chosen: list[tuple[int, int]],
    informative: int,
    rank: int,
    world_size: int,
    tokenizer,
) -> Sampled:
    """Process ``rank``'s contiguous share of the chosen groups' samples, as one sampled batch; samples
    of the filling (tied) groups, the chosen ones past ``informative``, stay out of the loss."""
    n = rounds[0].group_size
    samples = [(r, g * n + j, k < informative) for k, (r, g) in enumerate(chosen) for j in range(n)]
    local = len(samples) // world_size
    mine = samples[rank * local : (rank + 1) * local]
    device = rounds[0].components["score"].device
    pad = tokenizer.pad_token_id
    queries, query_mask = left_pad([rounds[r].queries[i].cpu() for r, i, _ in mine], pad)
    responses, response_mask = right_pad([rounds[r].responses[i].cpu() for r, i, _ in mine], pad)
    engine = None
    if rounds[0].engine_logprobs is not None:
        engine = torch.zeros(responses.shape)
        for row, (r, i, _) in enumerate(mine):
            lp = rounds[r].engine_logprobs[i]
            engine[row, : len(lp)] = lp.cpu()
        engine = engine.to(device)
    rollout = Rollout(queries.to(device), query_mask.to(device), responses.to(device), response_mask.to(device), engine)
    components = {k: torch.stack([rounds[r].components[k][i] for r, i, _ in mine]) for k in rounds[0].components}
    return Sampled(
        prompts=[rounds[r].prompts[i] for r, i, _ in mine],
        rollout=rollout,
        completions=decode_responses(tokenizer, rollout),
        components=components,
        timings={},
        trained=torch.tensor([t for _, _, t in mine], dtype=torch.bool, device=device),
    )
