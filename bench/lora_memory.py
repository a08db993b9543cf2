"""Memory and time of one PPO step on a GPT-2-medium shape: full fine-tune vs LoRA, with and without
gradient checkpointing, 2 CPU processes.

The model: 24 layers x 1024, 16 heads, GPT-2's vocabulary size 50257, seeded, built from a config
into bench/out/models/gpt2-medium (with the embedded tokenizer; sampling is restricted to its 512
tokens, the logits and the LM head keep the full 50257). One rollout of 8 prompts (4 per process),
128 new tokens, 1 PPO epoch over one mini-batch of 8, GAE with a value head, fp32. So that the
resident set follows live memory, ``train.cpu_malloc_reuse false`` and a fixed glibc mmap threshold
(``MALLOC_MMAP_THRESHOLD_=65536``: every block above 64 KiB is mapped on allocation and unmapped when
freed; glibc's default raises the threshold as blocks are freed and then keeps freed memory in the
heap). Per mode: the peak resident memory of the step (max over the 2 processes) and its seconds,
from the second step.

  full      every weight trains; the reference is a second, frozen copy
  lora      LoRA r=16 on every linear layer; the reference is the adapter-disabled policy
  lora_gc   LoRA + gradient checkpointing
  full_gc   full fine-tune + gradient checkpointing

    python bench/lora_memory.py                    # all modes, one 2-process launch each
    python bench/lora_memory.py --modes lora_gc    # one mode

One JSON line per mode on stdout (appended to --out). On a CUDA machine the same script reports
``torch.cuda.max_memory_allocated`` instead of the resident set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

MODES = {
    "full": [],
    "lora": ["--model.lora.r", "16", "--model.lora.alpha", "32"],
    "lora_gc": ["--model.lora.r", "16", "--model.lora.alpha", "32", "--model.gradient_checkpointing", "true"],
    "full_gc": ["--model.gradient_checkpointing", "true"],
}
SHAPE = dict(n_layer=24, n_embd=1024, n_head=16, n_positions=1024, vocab_size=50257, bos_token_id=0, eos_token_id=0)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--out", help="append the summary JSON lines to this file")
    return ap.parse_args()


def model_dir() -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    out = common.MODELS_DIR / "gpt2-medium"
    if (out / "model.safetensors").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(**SHAPE, pad_token_id=1)).save_pretrained(out)
    common.load_tokenizer().save_pretrained(out)
    return out


def worker(args) -> None:
    import torch
    from transformers import LogitsProcessorList

    from ppo_dist.config import parse_args as parse_config
    from ppo_dist.rl.engines.hf import generate, generation_config
    from ppo_dist.rl.trainer import Trainer
    from ppo_dist.runtime import distributed, tracking, zero

    with tempfile.TemporaryDirectory() as out_dir:
        cfg = parse_config([
            "--model.name_or_path", str(common.MODELS_DIR / "gpt2-medium"), "--rollout.batch_size", "8",
            "--rollout.max_new_tokens", str(args.new_tokens), "--ppo.ppo_epochs", "1", "--ppo.mini_batch_size", "8",
            "--rollout.forward_batch_size", "4", "--train.cpu_malloc_reuse", "false", "--log.trackers", "[]",
            "--train.output_dir", out_dir, *MODES[args.mode],
        ])  # fmt: skip
        trainer = Trainer(cfg)
        acc, tok, learner = trainer.accelerator, trainer.tokenizer, trainer.learner
        sampling = dataclasses.replace(learner.experience.sampling, min_new_tokens=args.new_tokens)  # full length

        def only_tokenizer_ids(input_ids, scores):  # the embedded tokenizer knows 512 of the 50257 ids
            scores[:, len(tok) :] = -float("inf")
            return scores

        for step in range(2):
            t0 = time.perf_counter()
            batch = learner.experience.prompts.local_batch(step, acc.process_index, acc.num_processes)
            tracking.reset_peak_memory(acc.device)
            with zero.gathered_for_generation(acc, learner.policy.model) as model, torch.no_grad():
                model.eval()
                rollout = generate(model, batch.input_ids, tok, generation_config(sampling),
                                   logits_processor=LogitsProcessorList([only_tokenizer_ids]))  # fmt: skip
            t_gen = time.perf_counter() - t0
            stats = learner.step(rollout, torch.randn(len(rollout)))
            seconds = time.perf_counter() - t0
            peak = distributed.reduce_max(acc, torch.tensor([tracking.peak_memory_gb(acc.device)])).item()
        trainable = sum(p.numel() for p in learner.policy.unwrapped.parameters() if p.requires_grad)
        if acc.is_main_process:
            print(json.dumps({
                "bench": "lora_memory", "mode": args.mode, "processes": acc.num_processes,
                "peak_mb_per_process": round(peak * 1024), "s_per_step": round(seconds, 2),
                "gen_s": round(t_gen, 2), "update_s": round(stats["time/update"], 2),
                "logprobs_s": round(stats["time/logprobs"], 2), "trainable_params": trainable,
                "reference": learner.reference.kind, "device": str(acc.device),
            }), flush=True)  # fmt: skip
        trainer.close()


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    import torch

    cuda = torch.cuda.is_available()
    model_dir()
    for mode in args.modes:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(args.processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               __file__, "--worker", "--mode", mode, "--new-tokens", str(args.new_tokens)]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(common.REPO_ROOT)}
        if not cuda:  # CPU processes over gloo, one thread each; freed memory leaves the resident set
            env.update(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true", MALLOC_MMAP_THRESHOLD_="65536")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
        record = json.loads(proc.stdout.strip().splitlines()[-1])
        record["command"] = f"python bench/lora_memory.py --modes {mode}"
        common.emit(record, args.out)


if __name__ == "__main__":
    main()
