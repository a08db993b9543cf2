"""The roles of a PPO step (OpenRLHF's ``make_experience``, verl's actor / critic / ref workers):
named objects the experience and the update ask for token scores.

* :class:`Policy` -- the trained model, prepared by accelerate (DDP / DeepSpeed). When the advantage
  estimator needs a critic (``gae``), the policy carries it: a value head on the policy's last hidden
  state (legacy trl's design), so one forward gives logprobs and values. Critic-free estimators build
  no value head at all.
* :class:`Reference` -- logprobs of the frozen reference: a separate model, or the LoRA policy with
  its adapter disabled (no second model in memory). None at all when ``ppo.kl_coef`` is 0.

Both score a :class:`~ppo_dist.rl.rollout.Rollout` through the model's ``forward`` (so DDP and
ZeRO-3 see the call), a micro-batch at a time.
"""

from __future__ import annotations

import contextlib

import torch

from ..models import CausalLMWithValueHead, TokenScores
from ..runtime import distributed
from .batching import planned_widths
from .rollout import Rollout


def score(model, part: Rollout, **kwargs) -> TokenScores:
    """``model``'s :class:`~ppo_dist.models.TokenScores` for the responses of ``part`` (one forward)."""
    return model(
        input_ids=part.queries,
        attention_mask=part.query_mask,
        responses=part.responses,
        response_mask=part.response_mask,
        **kwargs,
    )


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
    q_len, r_len = torch.stack(rollout.lengths()).cpu()  # the pass's one read of the masks
    for rows in micro_batches:
        idx = rows.to(device)
        part = rollout.select(idx, planned_widths(q_len, r_len, rows))
        with context():
            out = score(model, part, with_values=with_values)
        n = out.logprobs.shape[1]
        mask = part.response_mask[:, :n]
        logprobs[idx, :n] = out.logprobs.float() * mask
        if with_values:
            values[idx, :n] = out.values.float() * mask
    return logprobs, values


class Policy:
    """The trained model (accelerate-prepared); also the critic when it has a value head."""

    def __init__(self, model, accelerator):
        self.model, self.accelerator = model, accelerator
        self.unwrapped: CausalLMWithValueHead = distributed.unwrap(accelerator, model)

    @property
    def has_critic(self) -> bool:
        return self.unwrapped.v_head is not None

    def score(self, part: Rollout, *, entropy: str = "none", with_values: bool = False) -> TokenScores:
        """One forward of the prepared model on ``part`` (the update's, with autograd)."""
        return score(self.model, part, entropy=entropy, with_values=with_values)

    def logprobs_and_values(
        self, rollout: Rollout, micro_batches: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Old logprobs (and values, with a critic) of ``rollout``, ``(B, Lr)`` each, no grad."""
        return score_in_micro_batches(self.model, rollout, micro_batches, with_values=self.has_critic)

    def save_pretrained(self, path, tokenizer=None) -> None:
        """The policy as a normal HF directory (LoRA: merged, plus ``adapter/``), ``value_head.pt``
        beside it when there is a critic, and the tokenizer; written by the main process. Every
        process must call it (ZeRO-3 gathers)."""
        acc = self.accelerator
        acc.wait_for_everyone()
        state = distributed.full_state_dict(acc, self.model)
        if acc.is_main_process:
            self.unwrapped.save_pretrained(path, state_dict=state)
            if tokenizer is not None:
                tokenizer.save_pretrained(path)
        acc.wait_for_everyone()


class Reference:
    """Logprobs of the reference policy, for the KL penalty/loss."""

    def __init__(self, model, context=contextlib.nullcontext, kind: str = "separate model"):
        self.model, self.context, self.kind = model, context, kind

    @classmethod
    def adapter_disabled(cls, policy: Policy) -> Reference:
        """The LoRA policy with its adapter switched off: the base model, not a copy of it."""
        return cls(policy.model, policy.unwrapped.adapter_disabled, kind="adapter-disabled policy")

    def logprobs(self, rollout: Rollout, micro_batches: list[torch.Tensor]) -> torch.Tensor:
        return score_in_micro_batches(self.model, rollout, micro_batches, with_values=False, context=self.context)[0]
