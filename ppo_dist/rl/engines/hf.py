"""The HF engine: the policy itself samples (KV cache, left-padded batches).

The policy is the sampler, so there are no weights to sync and no sampler logprobs to compare. Under
ZeRO-3 the sharded policy is gathered once per rollout (``rollout.gather_for_generation``).

Decode loops (``rollout.decode``): transformers ``generate``, or :func:`sample_loop`, a plain
KV-cache loop over the model's ``forward`` that samples with transformers' own logits warpers in
``generate``'s order and draws the same random numbers, so it returns the same tokens as
``generate`` for the same seed (greedy and sampled; tests/test_decode.py) with less work per token;
``compiled`` runs that loop on a static KV cache with a ``torch.compile``'d decode step.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessorList,
    StaticCache,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ...config import DECODE_LOOPS
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


# What ``generate`` uses for a sampling setting left unset (None); the engine's configs set all three.
UNSET_SAMPLING = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}


def _warpers(gen_config: GenerationConfig) -> LogitsProcessorList:
    """The sampling warpers ``generate`` applies for ``gen_config``, in its order (temperature, top-k,
    top-p); none when decoding greedily."""
    warpers = LogitsProcessorList()
    if not gen_config.do_sample:
        return warpers
    temperature, top_k, top_p = (
        UNSET_SAMPLING[k] if getattr(gen_config, k) is None else getattr(gen_config, k) for k in UNSET_SAMPLING
    )
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k != 0:
        warpers.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    return warpers


def _forward_kwargs(lm) -> tuple[str, str | None]:
    """The names ``lm.forward`` gives the KV cache and the logits-to-keep count (they changed across
    transformers releases: ``past_key_values`` -> ``cache``, ``num_logits_to_keep`` -> ``logits_to_keep``)."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # peft passes kwargs through
    params = inspect.signature(base.forward).parameters
    cache = "cache" if "cache" in params else "past_key_values"
    keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
    return cache, keep


# rollout.decode=compiled: the static cache's length is rounded up to this, so prompts of different
# lengths share one compiled decode step (a new length compiles once more).
STATIC_CACHE_BUCKET = 64
_compiled_step = None  # torch.compile of _decode_step, made on first use; it recompiles per model and shape


def _decode_step(lm, ids, mask, positions, cache, cache_position, cache_name: str) -> torch.Tensor:
    """One token's forward on a static cache: the last position's logits ``(B, V)``."""
    kwargs = {cache_name: cache, "use_cache": True, "return_dict": True, "cache_position": cache_position}
    return lm(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs).logits[:, -1]


def _static_cache(lm, length: int):
    """A ``StaticCache`` of ``length`` positions (transformers 5's signature; allocated on first use)."""
    params = inspect.signature(StaticCache.__init__).parameters
    if "max_batch_size" in params or "batch_size" in params:
        raise ValueError("rollout.decode=compiled needs transformers>=5 (its StaticCache); use rollout.decode=loop")
    return StaticCache(config=lm.config, max_cache_len=length)


@torch.no_grad()
def sample_loop(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, gen_config: GenerationConfig, compiled: bool = False
):
    """Responses ``(B, n)`` to left-padded prompts, ``n <= max_new_tokens``: what ``model.generate``
    returns after the prompt, from one forward per token with a KV cache and nothing else per token.

    Same tokens as ``generate``: positions from the attention mask (padding at position 1), fp32 logits
    of the last position, EOS blocked before ``min_new_tokens``, ``generate``'s warpers, then
    ``multinomial`` (or ``argmax``); finished rows get padding, and the loop stops when every row has
    produced EOS. Decoder-only models.

    ``compiled``: a static KV cache (``STATIC_CACHE_BUCKET``-rounded) and a ``torch.compile``'d decode
    step with fixed shapes; the prompt's forward stays eager. The attention then spans the whole cache
    (masked), so logits may differ in the last bits: greedy tokens are the same; sampled ones were the same
    in tests/test_decode.py, but a last-bit difference can flip a draw.
    """
    global _compiled_step
    g = gen_config
    lm = getattr(model, "pretrained_model", model)  # the value-head wrapper's LM (or a peft model)
    cache_name, keep_name = _forward_kwargs(lm)
    eos = torch.tensor([g.eos_token_id] if isinstance(g.eos_token_id, int) else list(g.eos_token_id))
    eos = eos.to(input_ids.device)
    pad = g.pad_token_id if g.pad_token_id is not None else int(eos[0])
    warpers = _warpers(g)
    B, Lq = input_ids.shape
    mask = attention_mask.long()
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    prefill = {cache_name: DynamicCache(), "use_cache": True, "return_dict": True}
    if compiled:
        length = -(-(Lq + g.max_new_tokens) // STATIC_CACHE_BUCKET) * STATIC_CACHE_BUCKET
        prefill[cache_name] = _static_cache(lm, length)
        prefill["cache_position"] = torch.arange(Lq, device=input_ids.device)
        full_mask = torch.cat([mask, mask.new_zeros(B, length - Lq)], dim=1)  # fixed shape for the compiled step
        slots = torch.arange(Lq, length, device=input_ids.device)  # cache slot of each new token
        if _compiled_step is None:
            _compiled_step = torch.compile(_decode_step, dynamic=False)
    if keep_name is not None:
        prefill[keep_name] = 1
    logits = lm(input_ids=input_ids, attention_mask=mask, position_ids=positions, **prefill).logits[:, -1]
    cache = prefill[cache_name]
    step = {cache_name: cache, "use_cache": True, "return_dict": True}
    unfinished = torch.ones(B, dtype=torch.long, device=input_ids.device)
    tokens = []
    for t in range(g.max_new_tokens):
        scores = logits.to(dtype=torch.float32, copy=True)
        if t < (g.min_new_tokens or 0):
            scores[:, eos] = -float("inf")
        scores = warpers(None, scores)
        if g.do_sample:
            nxt = torch.multinomial(F.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            nxt = torch.argmax(scores, dim=-1)
        nxt = nxt * unfinished + pad * (1 - unfinished)
        tokens.append(nxt)
        unfinished = unfinished & ~torch.isin(nxt, eos)
        if t == g.max_new_tokens - 1 or not bool(unfinished.any()):
            break
        positions = positions[:, -1:] + 1
        if compiled:  # the new token goes to cache slot Lq + t
            full_mask[:, Lq + t] = 1
            logits = _compiled_step(lm, nxt[:, None], full_mask, positions, cache, slots[t : t + 1], cache_name)
        else:
            mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
            logits = lm(input_ids=nxt[:, None], attention_mask=mask, position_ids=positions, **step).logits[:, -1]
    return torch.stack(tokens, dim=1) if tokens else input_ids.new_zeros(B, 0)


@torch.no_grad()
def generate(
    model,
    query_ids: list[torch.Tensor],
    tokenizer,
    gen_config: GenerationConfig,
    chunk_size: int = 0,
    decode: str = "generate",
    **kwargs,
) -> Rollout:
    """Batched sampling with KV cache on left-padded prompts; ``chunk_size`` prompts per call (0 = all).
    ``decode``: ``generate`` (transformers), ``loop`` or ``compiled`` (:func:`sample_loop`). ``kwargs`` go to
    ``model.generate`` (e.g. ``logits_processor``); the loop takes none."""
    device = next(model.parameters()).device
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    if decode not in DECODE_LOOPS:
        raise ValueError(f"rollout.decode={decode!r}: expected one of {', '.join(DECODE_LOOPS)}")
    if decode != "generate" and (encoder_decoder or kwargs):
        what = "an encoder-decoder model" if encoder_decoder else f"generate arguments {sorted(kwargs)}"
        raise ValueError(f"rollout.decode={decode} cannot take {what}; use rollout.decode=generate")
    chunk_size = chunk_size or len(query_ids)
    pad = tokenizer.pad_token_id
    queries, query_mask = (t.to(device) for t in left_pad(query_ids, pad))
    pieces = []
    for start in range(0, len(query_ids), chunk_size):
        q, m = queries[start : start + chunk_size], query_mask[start : start + chunk_size]
        if decode != "generate":
            pieces.append(sample_loop(model, q, m, gen_config, compiled=decode == "compiled"))
            continue
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

    def __init__(
        self, accelerator, policy: Policy, tokenizer, gather_for_generation: bool = True, decode: str = "generate"
    ):
        self.accelerator, self.policy, self.tokenizer = accelerator, policy, tokenizer
        self.gather, self.decode = gather_for_generation, decode

    def generate(self, prompt_ids: list[torch.Tensor], sampling: Sampling) -> Rollout:
        acc = self.accelerator
        torch.manual_seed(sampling.seed)
        with zero.gathered_for_generation(acc, self.policy.model, self.gather) as model, acc.autocast():
            model.train(sampling.policy_mode == "train")  # rollout.policy_mode: dropout active while sampling
            gen = generation_config(sampling)
            return generate(model, prompt_ids, self.tokenizer, gen, sampling.chunk_size, decode=self.decode)

    def sync_weights(self, policy: Policy, step: int | None = None) -> float | None:
        """Nothing to do: the engine samples from the policy's own weights."""
        return None

    def close(self) -> None:
        pass


def build(cfg, accelerator, policy: Policy, tokenizer) -> HFEngine:
    if cfg.rollout.decode == "compiled" and zero.zero_stage(accelerator) == 3:
        raise ValueError(
            "rollout.decode=compiled cannot run under ZeRO-3 (the gathered parameters change under the compiled "
            "step); use rollout.decode=loop"
        )
    return HFEngine(accelerator, policy, tokenizer, cfg.rollout.gather_for_generation, cfg.rollout.decode)
