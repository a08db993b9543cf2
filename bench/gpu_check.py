"""GPU check: generation and update throughput, MFU and peak memory of the PPO step, one JSON file.

    PYTHONPATH=. python bench/gpu_check.py --out gpu_check.json            # on one NVIDIA GPU, < 8 minutes
    PYTHONPATH=. python bench/gpu_check.py --device cpu --tiny --out x.json  # the same code on tiny shapes (CI)

Needs torch, transformers, accelerate (and peft, tensorboard as the package imports them lazily); not
datasets, deepspeed or trl, and no network: models are built from configs, prompts are random token
ids, and the project is used from ``PYTHONPATH``. For each shape (a 124M GPT-2 and a ~1.1B Llama body,
bf16 autocast over fp32 master weights, one process):

* ``generation``: the HF engine (``rollout.engine: hf``, ``generate`` with KV cache) -- new tokens/s;
  and the vLLM engine on the same model and batch when ``import vllm`` works (after its weight sync).
* ``update``: ``Learner.step`` on that rollout -- the old-logprob and reference passes and one PPO
  epoch (forward + backward + AdamW) -- tokens/s of each, and the update's model FLOP utilisation
  against the card's dense bf16 peak: ``6 * N * tokens / seconds / peak`` (N = parameters; attention
  FLOPs left out, so MFU is slightly understated for long sequences).
* ``peak_memory_gb``: ``torch.cuda.max_memory_allocated`` over the shape's steps (CPU: peak RSS).

Times are medians over ``--steps`` steps after one warm-up step.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ppo_dist.config import Config, validate  # noqa: E402
from ppo_dist.models import CausalLMWithValueHead, load_tokenizer  # noqa: E402
from ppo_dist.rl.engines import Sampling, build_rollout_engine  # noqa: E402
from ppo_dist.rl.engines.hf import HFEngine  # noqa: E402
from ppo_dist.rl.learner import build_learner  # noqa: E402
from ppo_dist.runtime import distributed, tracking  # noqa: E402

# Dense bf16 peak (FLOP/s, no sparsity) by a substring of torch.cuda.get_device_name().
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}
CPU_PEAK = 790e9  # 2-core bf16 matmul peak measured on the CI machines (shared/notes/performance.md)

SHAPES = {
    "gpt2-124m": ("gpt2", dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257)),
    "llama-1.1b": (
        "llama",
        dict(
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=22,
            num_attention_heads=32,
            num_key_value_heads=4,
            max_position_embeddings=2048,
            vocab_size=32000,
        ),
    ),
}
TINY_SHAPES = {
    "gpt2-tiny": ("gpt2", dict(n_embd=64, n_layer=2, n_head=2, n_positions=256, vocab_size=512)),
    "llama-tiny": (
        "llama",
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=256,
            vocab_size=512,
        ),
    ),
}
# (prompts, prompt tokens, new tokens) per step
BATCH = {"full": (64, 128, 256), "tiny": (8, 16, 16)}


def build_lm(family: str, shape: dict, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    ids["pad_token_id"] = tokenizer.pad_token_id
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(**shape, **ids))
    return LlamaForCausalLM(LlamaConfig(**shape, **ids, tie_word_embeddings=False))


def run_config(prompts: int, new_tokens: int, engine: str) -> Config:
    cfg = Config()
    cfg.model.dtype = "bf16"
    cfg.rollout.engine = engine
    cfg.rollout.batch_size = prompts
    cfg.rollout.max_new_tokens = new_tokens
    cfg.rollout.forward_batch_size = 16
    cfg.data.max_prompt_length = 128
    cfg.ppo.advantage_estimator = "reinforce_pp"  # no value head: the policy's own cost
    cfg.ppo.ppo_epochs = 1
    cfg.ppo.mini_batch_size = prompts
    cfg.ppo.gradient_accumulation_steps = prompts // 8
    cfg.ppo.kl_coef = 0.05  # a frozen reference copy, scored every step, as in PPO
    cfg.log.trackers = []
    return cfg


def time_shape(name: str, family: str, shape: dict, batch: tuple[int, int, int], steps: int, device: str) -> dict:
    prompts, prompt_len, new_tokens = batch
    engines = ["hf"] + (["vllm"] if importlib.util.find_spec("vllm") is not None else [])
    cfg = run_config(prompts, new_tokens, "hf")
    plan = validate(cfg, 1)
    acc = distributed.build_accelerator(cfg, plan)
    tokenizer = load_tokenizer(cfg.model)
    torch.manual_seed(0)
    lm = build_lm(family, shape, tokenizer)
    n_params = sum(p.numel() for p in lm.parameters())
    learner = build_learner(cfg, acc, tokenizer, plan, policy=CausalLMWithValueHead(lm, value_head=False))
    g = torch.Generator().manual_seed(0)
    vocab = shape.get("vocab_size")
    ids = [torch.randint(2, vocab, (prompt_len,), generator=g) for _ in range(prompts)]
    # every response is full length: token counts are those of the batch
    sampling = Sampling.from_config(cfg.rollout, tokenizer).with_seed(0, min_new_tokens=new_tokens)
    result: dict = {"params": n_params, "prompts": prompts, "prompt_tokens": prompt_len, "new_tokens": new_tokens}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tracking.reset_peak_memory(acc.device)
    hf = HFEngine(acc, learner.policy, tokenizer)
    gen_s, logprob_s, update_s = [], [], []
    for step in range(steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        rollout = hf.generate(ids, sampling.with_seed(step, min_new_tokens=new_tokens))
        _sync(device)
        gen = time.perf_counter() - t0
        stats = learner.step(rollout, torch.randn(prompts, generator=g).to(acc.device))
        if step:  # the first step warms up kernels and allocators
            gen_s.append(gen)
            logprob_s.append(stats["time/logprobs"])
            update_s.append(stats["time/update"])
    tokens = prompts * (prompt_len + new_tokens)
    gen_t, lp_t, up_t = (statistics.median(x) for x in (gen_s, logprob_s, update_s))
    peak = _peak_flops(device)
    result["hf_generation_tokens_per_s"] = prompts * new_tokens / gen_t
    result["logprob_pass_tokens_per_s"] = tokens / lp_t  # policy + reference forwards
    result["update_tokens_per_s"] = tokens / up_t
    result["update_mfu"] = 6 * n_params * tokens / up_t / peak
    result["step_s"] = gen_t + lp_t + up_t
    result["peak_memory_gb"] = tracking.peak_memory_gb(acc.device)
    if "vllm" in engines:
        result.update(_vllm_generation(cfg, acc, learner, tokenizer, ids, sampling, steps, device))
    distributed.shutdown(acc)
    del learner, hf, lm
    if device == "cuda":
        torch.cuda.empty_cache()
    print(json.dumps({name: result}), flush=True)
    return result


def _vllm_generation(cfg, acc, learner, tokenizer, ids, sampling, steps, device) -> dict:
    cfg.rollout.engine = "vllm"
    cfg.rollout.vllm_sleep = False
    t0 = time.perf_counter()
    engine = build_rollout_engine(cfg, acc, learner.policy, tokenizer)  # starts and syncs the policy's weights
    start = time.perf_counter() - t0
    sync = engine.sync_weights(learner.policy)
    seeds = tuple(range(len(ids)))
    times = []
    for step in range(steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        engine.generate(ids, sampling.with_seed(step, min_new_tokens=sampling.max_new_tokens, sample_seeds=seeds))
        _sync(device)
        if step:
            times.append(time.perf_counter() - t0)
    engine.close()
    gen_t = statistics.median(times)
    return {
        "vllm_generation_tokens_per_s": len(ids) * sampling.max_new_tokens / gen_t,
        "vllm_engine_start_s": start,
        "vllm_weight_sync_s": sync,
    }


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_flops(device: str) -> float:
    if device != "cuda":
        return CPU_PEAK
    name = torch.cuda.get_device_name()
    return next((v for k, v in BF16_PEAK.items() if k in name), math.nan)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes and batch (CPU mode in CI)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per shape (after one warm-up step)")
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--shape", help=argparse.SUPPRESS)  # internal: one shape in this process, its JSON on stdout
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: --device cuda but torch sees no CUDA device (use --device cpu --tiny)")
    if args.device == "cpu":
        import os

        os.environ["ACCELERATE_USE_CPU"] = "true"
    shapes = TINY_SHAPES if args.tiny else SHAPES
    batch = BATCH["tiny" if args.tiny else "full"]
    report = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "bf16_peak_flops": _peak_flops(args.device),
        "vllm": importlib.util.find_spec("vllm") is not None,
        "shapes": {},
    }
    if args.shape:
        family, shape = shapes[args.shape]
        time_shape(args.shape, family, shape, batch, args.steps, args.device)
        return
    t0 = time.perf_counter()
    # Each shape in a process of its own: a vLLM engine cannot be started twice in one process (its
    # parallel state outlives the first), and each shape's peak memory is then its own.
    for name in shapes:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--shape", name]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith(f'{{"{name}"')]
        if proc.returncode != 0 or not lines:
            sys.exit(f"gpu_check: shape {name} failed (exit {proc.returncode}); its output is above")
        report["shapes"][name] = json.loads(lines[-1])[name]
        print(lines[-1], flush=True)
    report["wall_s"] = time.perf_counter() - t0
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out} in {report['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
