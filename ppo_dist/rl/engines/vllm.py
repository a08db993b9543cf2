"""The vLLM engine: every process holds its own in-process vLLM engine (colocated) for its share of the prompts.

The engine keeps its own copy of the policy's weights and its own sampler:

* **start** -- ``vllm.LLM`` on a directory holding only the policy's config (``load_format="dummy"``:
  no weights are read from disk), then the policy's weights are synced in. The RNG state of the
  process is kept as it was (vLLM reseeds it).
* **sampling** -- ``rollout.*`` become ``SamplingParams``; every sample has its own seed from
  (``train.seed``, step, global sample index), so a run is reproducible, resumable, and samples the
  same responses on any number of processes. Prompts go in as token ids (no tokenizer in the engine);
  the sampler's logprob of each token comes back with the rollout (``Rollout.engine_logprobs``).
* **weight sync** -- after every update, straight from the unwrapped policy into the running engine
  (``collective_rpc("reload_weights")``, no disk): under DDP / ZeRO-1/2 every tensor at once, under
  ZeRO-3 one transformer block at a time (gathered, sent, released); a LoRA policy sends its merged
  weights ``W + B A * scale``. The prefix cache is reset after a sync (its keys and values were
  computed with the old weights).
* **memory** -- on a GPU the engine sleeps during the update (``rollout.vllm_sleep``; its KV cache and
  weights are released) and wakes up for the sync; CPU backends do not support sleeping.
* **failures** -- start, generate and sync are bounded by ``rollout.vllm_timeout``; an error on any
  process stops every process with one line naming the process, the step and the vLLM version.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import numpy as np
import torch

from ...config import VLLM_CPU_HEAD_SIZES, Config
from ...models import is_peft_model
from ...runtime import zero
from ..roles import Policy
from ..rollout import Rollout, left_pad, right_pad
from . import RolloutEngineError, Sampling

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_LAYER = re.compile(r"\.(\d+)\.")  # a transformer block's index in a parameter name
# The environment an accelerate launch sets, which starting vLLM may overwrite (LOCAL_WORLD_SIZE=1).
_LAUNCH_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class VLLMEngine:
    """:class:`~ppo_dist.rl.engines.RolloutEngine` on an in-process ``vllm.LLM``; see the module doc."""

    def __init__(self, cfg: Config, accelerator, policy: Policy, tokenizer):
        r = cfg.rollout
        self.accelerator, self.tokenizer, self.timeout = accelerator, tokenizer, r.vllm_timeout
        self.rank = accelerator.process_index
        self.on_gpu = accelerator.device.type == "cuda"
        self.sleeping = False
        self.sleep_enabled = self.on_gpu and r.vllm_sleep
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in process: weights load without a copy
        with self._bounded("import vllm", None):
            import vllm

        self.version = vllm.__version__
        if not self.on_gpu:
            self._check_cpu_head_size(policy)
        self._model_dir = tempfile.mkdtemp(prefix=f"ppo_dist_vllm_{self.rank}_")
        self._save_architecture(policy)
        max_len = cfg.data.max_prompt_length + r.max_new_tokens
        kv_gb = r.vllm_kv_cache_gb if r.vllm_kv_cache_gb is not None else (None if self.on_gpu else 1.0)
        kwargs = dict(
            model=self._model_dir,
            load_format="dummy",
            skip_tokenizer_init=True,
            dtype=_DTYPES[cfg.model.dtype],
            seed=cfg.train.seed,
            max_model_len=max_len,
            gpu_memory_utilization=r.vllm_gpu_memory_utilization,
            enable_prefix_caching=True,
            enable_sleep_mode=self.sleep_enabled,
            enforce_eager=not self.on_gpu,
        )
        if kv_gb is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_gb * 2**30)
        if not self.on_gpu:
            # On CPU a prompt prefilled over several scheduler steps breaks seeded sampling ("CPU Generator
            # does not use offset"): every prompt is prefilled in one step.
            kwargs["enable_chunked_prefill"] = False
        if accelerator.num_processes > 1:
            kwargs["distributed_executor_backend"] = "external_launcher"  # one engine per launched process
        with self._bounded("engine start", None), _rng_kept(), _launch_env_kept():
            self.llm = vllm.LLM(**kwargs)
        self._sampling_params = vllm.SamplingParams
        self.sync_weights(policy)

    def _check_cpu_head_size(self, policy: Policy) -> None:
        """vLLM's CPU attention runs a few head sizes only; say so now rather than at the first forward."""
        c = policy.unwrapped.config
        heads = getattr(c, "num_attention_heads", None) or getattr(c, "n_head", None)
        head = getattr(c, "head_dim", None) or (getattr(c, "hidden_size", None) or c.n_embd) // heads
        if head not in VLLM_CPU_HEAD_SIZES:
            raise RolloutEngineError(
                f"vllm {self.version} (process {self.rank}): the CPU attention supports head sizes "
                f"{', '.join(map(str, VLLM_CPU_HEAD_SIZES))}; this model's is {head}"
            )

    def _save_architecture(self, policy: Policy) -> None:
        """``config.json`` of the policy's LM (weights come from the policy), naming its class: a config
        built in memory has no ``architectures``, and vLLM picks its implementation by that name."""
        config = copy.deepcopy(policy.unwrapped.config)
        config.architectures = [type(policy.unwrapped.hf_model).__name__]
        config.save_pretrained(self._model_dir)

    # ------------------------------------------------------------------ sampling

    def generate(self, prompt_ids: list[torch.Tensor], sampling: Sampling) -> Rollout:
        if self.sleeping:
            self._wake_up(sampling.step)
        seeds = sampling.sample_seeds or tuple(sampling.seed + i for i in range(len(prompt_ids)))
        params = [self._params(sampling, seed) for seed in seeds]
        prompts = [{"prompt_token_ids": ids.tolist()} for ids in prompt_ids]
        with self._bounded("generate", sampling.step):
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        if self.sleep_enabled:
            with self._bounded("sleep", sampling.step):
                self.llm.sleep(level=1)
            self.sleeping = True
        device, pad = self.accelerator.device, self.tokenizer.pad_token_id
        tokens = [torch.tensor(list(o.outputs[0].token_ids), dtype=torch.long) for o in outputs]
        logprobs = [
            torch.tensor([d[t].logprob for t, d in zip(o.outputs[0].token_ids, o.outputs[0].logprobs, strict=True)])
            for o in outputs
        ]
        queries, query_mask = left_pad(prompt_ids, pad)
        responses, response_mask = right_pad(tokens, pad)
        engine_logprobs = torch.zeros(responses.shape)
        for i, lp in enumerate(logprobs):
            engine_logprobs[i, : len(lp)] = lp
        return Rollout(
            queries.to(device),
            query_mask.to(device),
            responses.to(device),
            response_mask.to(device),
            engine_logprobs.to(device),
        )

    def _params(self, sampling: Sampling, seed: int):
        s = sampling
        return self._sampling_params(
            n=1,
            temperature=s.temperature if s.do_sample else 0.0,
            top_k=s.top_k if s.do_sample else 0,
            top_p=s.top_p if s.do_sample else 1.0,
            max_tokens=s.max_new_tokens,
            min_tokens=s.min_new_tokens,
            seed=seed % (1 << 63),
            stop_token_ids=[s.eos_token_id],
            logprobs=0,  # the sampled token's logprob (of the raw distribution, as the trainer computes it)
            detokenize=False,
        )

    # ------------------------------------------------------------------ weights

    def sync_weights(self, policy: Policy, step: int | None = None) -> float:
        """Send the policy's current weights into the engine; returns the seconds it took."""
        t0 = time.perf_counter()
        if self.sleeping:
            self._wake_up(step)
        with self._bounded("weight sync", step):
            for chunk in hf_weights(self.accelerator, policy):
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": chunk})
            self.llm.reset_prefix_cache()
        return time.perf_counter() - t0

    def _wake_up(self, step: int | None) -> None:
        with self._bounded("wake up", step):
            self.llm.wake_up()
        self.sleeping = False

    # ------------------------------------------------------------------ failures and shutdown

    @contextlib.contextmanager
    def _bounded(self, what: str, step: int | None):
        """Run ``what`` within ``rollout.vllm_timeout``; an error becomes a :class:`RolloutEngineError`
        that names the process, the step and the vLLM version. Past the time limit the process exits
        (a hung call cannot be interrupted), and the launcher ends the others."""
        where = f"process {self.rank}" + (f", step {step}" if step is not None else "")
        version = getattr(self, "version", "?")

        def expired() -> None:
            print(
                f"error: vllm {version} ({where}): {what} did not finish within "
                f"rollout.vllm_timeout={self.timeout:g}s; stopping",
                file=sys.stderr,
                flush=True,
            )
            os._exit(1)

        timer = threading.Timer(self.timeout, expired)
        timer.daemon = True
        timer.start()
        try:
            yield
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise RolloutEngineError(f"vllm {version} ({where}): {what} failed: {type(e).__name__}: {first}") from e
        finally:
            timer.cancel()

    def close(self) -> None:
        """Remove the engine's config directory. The engine itself lives until the process exits: shutting
        it down destroys torch.distributed's default group, which the trainer's collectives still use."""
        shutil.rmtree(self._model_dir, ignore_errors=True)


def hf_weights(accelerator, policy: Policy) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """The policy's LM weights under their Hugging Face names, in chunks vLLM loads whole: every tensor
    at once, or under ZeRO-3 one transformer block (and one chunk of everything else) at a time, each
    gathered while it is sent. LoRA: merged (``base + delta``, the adapter's own tensors left out).
    The value head is not part of the LM. Tied weights come under every name they have (GPT-2's
    ``lm_head.weight`` too): vLLM's loaders expect them."""
    lm = policy.unwrapped.pretrained_model
    named = list(lm.named_parameters(remove_duplicate=False))
    if zero.zero_stage(accelerator) != 3:
        yield list(_hf_named(lm, named))
        return
    import deepspeed

    blocks: dict[int | None, list] = {}
    for name, p in named:
        m = _LAYER.search(name)
        blocks.setdefault(int(m.group(1)) if m else None, []).append((name, p))
    for key in sorted(blocks, key=lambda k: -1 if k is None else k):
        group = blocks[key]
        with deepspeed.zero.GatheredParameters([p for _, p in group]):
            yield list(_hf_named(lm, group))


def _hf_named(lm, named: list[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(HF name, tensor)``: peft's prefixes and adapter tensors removed, LoRA deltas merged in."""
    if not is_peft_model(lm):
        yield from ((n, p.detach()) for n, p in named)
        return
    modules = dict(lm.named_modules())
    for name, p in named:
        if "lora_" in name:
            continue
        module_name, _, leaf = name.rpartition(".")
        tensor = p.detach()
        if module_name.endswith(".base_layer") and leaf == "weight":
            lora = modules[module_name.removesuffix(".base_layer")]
            tensor = tensor + sum(lora.get_delta_weight(a) for a in lora.active_adapters if a in lora.lora_A)
        yield _strip_peft(name), tensor


def _strip_peft(name: str) -> str:
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


@contextlib.contextmanager
def _launch_env_kept():
    """Starting vLLM rewrites some of the launcher's variables (LOCAL_WORLD_SIZE=1): put them back."""
    saved = {k: os.environ.get(k) for k in _LAUNCH_ENV}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _rng_kept():
    """vLLM seeds Python's, NumPy's and torch's global generators when it starts: keep the trainer's."""
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def build(cfg: Config, accelerator, policy: Policy, tokenizer) -> VLLMEngine:
    return VLLMEngine(cfg, accelerator, policy, tokenizer)
