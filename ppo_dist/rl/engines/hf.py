"""The HF engine: transformers ``generate`` on the policy itself (KV cache, left-padded batches).

The policy is the sampler, so there are no weights to sync and no sampler logprobs to compare. Under
ZeRO-3 the sharded policy is gathered once per rollout (``rollout.gather_for_generation``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import GenerationConfig

from ...runtime import zero
from ..roles import Policy
from ..rollout import Rollout, left_pad, truncate_at_eos
from . import Sampling


def generation_config(sampling: Sampling, max_new_tokens: int | None = None) -> GenerationConfig:
    """The HF ``GenerationConfig`` of ``sampling`` (``max_new_tokens`` overrides its limit)."""
    s = sampling
    options = dict(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p) if s.do_sample else {}
    return GenerationConfig(
        max_new_tokens=max_new_tokens or s.max_new_tokens,
        min_new_tokens=s.min_new_tokens or None,
        do_sample=s.do_sample,
        use_cache=True,
        eos_token_id=s.eos_token_id,
        pad_token_id=s.pad_token_id,
        bos_token_id=s.bos_token_id,
        **options,
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


class HFEngine:
    """:class:`~ppo_dist.rl.engines.RolloutEngine` on the policy's own ``generate``."""

    def __init__(self, accelerator, policy: Policy, tokenizer, gather_for_generation: bool = True):
        self.accelerator, self.policy, self.tokenizer = accelerator, policy, tokenizer
        self.gather = gather_for_generation

    def generate(self, prompt_ids: list[torch.Tensor], sampling: Sampling) -> Rollout:
        acc = self.accelerator
        torch.manual_seed(sampling.seed)
        with zero.gathered_for_generation(acc, self.policy.model, self.gather) as model, acc.autocast():
            model.train(sampling.policy_mode == "train")  # rollout.policy_mode: dropout active while sampling
            return generate(model, prompt_ids, self.tokenizer, generation_config(sampling), sampling.chunk_size)

    def sync_weights(self, policy: Policy, step: int | None = None) -> float | None:
        """Nothing to do: the engine samples from the policy's own weights."""
        return None

    def close(self) -> None:
        pass


def build(cfg, accelerator, policy: Policy, tokenizer) -> HFEngine:
    return HFEngine(accelerator, policy, tokenizer, cfg.rollout.gather_for_generation)
