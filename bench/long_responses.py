"""Response-length scaling: seconds per PPO step split into its phases, and peak memory, as responses grow.

Runs in the project's environment on the embedded 3M shape (4 layers x 256, vocab 512), batch 8,
1 PPO epoch, one mini-batch of 8 (one optimiser step per rollout), GAE with a value head. Response
lengths are forced to spread uniformly between 16 and ``max_new_tokens``: a logits processor
forbids EOS before a sample's target length and forces it there. For every length two ways to cut
the update (and the logprob/value passes) into micro-batches are measured:

  fixed   micro-batches of 2 samples in the shuffled order (ppo.gradient_accumulation_steps 4,
          rollout.forward_batch_size 2)
  tokens  token budget of 2 x (prompt + max_new_tokens) per micro-batch, samples sorted by length
          (ppo.micro_batch_tokens, rollout.forward_tokens)
  packed  that budget in real tokens, each micro-batch's samples packed end to end into rows
          (ppo.packing): no padding in the model's body

    python bench/long_responses.py --lengths 256 1024 4096          # the scaling table
    python bench/long_responses.py --gae-only                       # GAE alone up to T = 32768

One JSON line per measurement on stdout (appended to --out).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

PROMPT_TOKENS = 16  # every prompt of common.PROMPTS fits


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--modes", nargs="+", choices=["fixed", "tokens", "packed"], default=["fixed", "tokens", "packed"])
    ap.add_argument("--steps", type=int, default=2, help="steps per setting; the last one is reported")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gae-only", action="store_true", help="time GAE alone (vectorised scan vs T x T matrix)")
    ap.add_argument("--out", help="append the JSON lines to this file")
    return ap.parse_args()


def build_trainer(max_new_tokens: int, mode: str, out_dir: str):
    from ppo_dist.config import Config
    from ppo_dist.rl.trainer import Trainer

    cfg = Config()
    m = cfg.model
    m.tiny_n_layer, m.tiny_n_embd, m.tiny_n_head = 4, 256, 4  # the 3m shape
    m.tiny_n_positions = max_new_tokens + 2 * PROMPT_TOKENS
    cfg.data.prompts = list(common.PROMPTS)
    cfg.data.max_prompt_length = PROMPT_TOKENS
    r, p = cfg.rollout, cfg.ppo
    r.batch_size, r.max_new_tokens = 8, max_new_tokens
    p.ppo_epochs, p.mini_batch_size = 1, 8
    budget = 2 * (PROMPT_TOKENS + max_new_tokens)
    if mode == "fixed":
        p.gradient_accumulation_steps, r.forward_batch_size = 4, 2
    else:
        p.micro_batch_tokens, r.forward_tokens = budget, budget
        p.packing = mode == "packed"
    cfg.train.output_dir, cfg.train.total_steps = out_dir, 10
    cfg.log.trackers, cfg.log.progress_bar = [], False
    return Trainer(cfg)


def forced_lengths_processor(targets, eos: int):
    """Forbid EOS before each row's target length, force it at that length."""
    import torch

    class ForceLengths:
        def __init__(self):
            self.start = None

        def __call__(self, input_ids, scores):
            if self.start is None:
                self.start = input_ids.shape[1]
            t = input_ids.shape[1] - self.start  # tokens generated so far
            at_target = torch.as_tensor([t == n - 1 for n in targets], device=scores.device)
            scores[:, eos] = torch.where(at_target, scores[:, eos], torch.full_like(scores[:, eos], -float("inf")))
            forced = torch.full_like(scores, -float("inf"))
            forced[:, eos] = 0.0
            return torch.where(at_target.unsqueeze(1), forced, scores)

    return ForceLengths()


def run_step(trainer, step: int, targets: list[int]) -> dict:
    import torch
    from transformers import LogitsProcessorList

    from ppo_dist.rl.engines.hf import generate, generation_config
    from ppo_dist.runtime import tracking, zero

    acc, tok, learner = trainer.accelerator, trainer.tokenizer, trainer.learner
    batch = learner.experience.prompts.local_batch(step, 0, 1)
    tracking.reset_peak_memory(acc.device)
    t0 = time.perf_counter()
    with zero.gathered_for_generation(acc, learner.policy.model) as model, torch.no_grad():
        model.eval()
        processor = LogitsProcessorList([forced_lengths_processor(targets, tok.eos_token_id)])
        gen_config = generation_config(learner.experience.sampling)
        rollout = generate(model, batch.input_ids, tok, gen_config, logits_processor=processor)
    t_gen = time.perf_counter() - t0
    lengths = rollout.response_mask.sum(1).tolist()
    scores = torch.tensor([n / max(targets) for n in lengths])  # any score; the cost does not depend on it
    stats = learner.step(rollout, scores)
    return {
        "gen_s": t_gen,
        "logprobs_s": stats["time/logprobs"],
        "advantages_s": stats["time/advantages"],
        "update_s": stats["time/update"],
        "step_s": t_gen + stats["time/logprobs"] + stats["time/advantages"] + stats["time/update"],
        "response_tokens": sum(lengths),
        "lengths": lengths,
        "peak_rss_mb": tracking.peak_memory_gb(acc.device) * 1024,
        "micro_batches": learner.update.micro_batch_counts,
    }


def gae_timings(out: str | None) -> None:
    import torch

    from ppo_dist import algos

    def matrix_gae(deltas, discount):  # the former T x T decay-matrix form, for comparison
        T = deltas.shape[1]
        t = torch.arange(T, dtype=deltas.dtype)
        exponent = t.unsqueeze(0) - t.unsqueeze(1)
        decay = torch.where(exponent >= 0, discount ** exponent.clamp_min(0), torch.zeros_like(exponent))
        return deltas @ decay.T

    for T in (512, 4096, 8192, 16384, 32768):
        x = torch.randn(8, T)
        row = {"bench": "gae", "B": 8, "T": T}
        candidates = (
            ("scan", lambda x=x: algos.discounted_cumsum(x, 0.95)),
            ("matrix", lambda x=x: matrix_gae(x, 0.95)),
        )
        for name, fn in candidates:
            if name == "matrix" and T > 16384:
                row["matrix_s"] = None  # a 4 GiB matrix
                continue
            fn()
            t0 = time.perf_counter()
            for _ in range(3):
                fn()
            row[f"{name}_s"] = round((time.perf_counter() - t0) / 3, 4)
        common.emit(row, out)


def main() -> None:
    args = parse_args()
    common.set_threads(args.threads)
    if args.gae_only:
        gae_timings(args.out)
        return
    for length in args.lengths:
        targets = [round(16 + (length - 16) * i / 7) for i in range(8)]  # 16 ... length, uniform
        for mode in args.modes:
            with tempfile.TemporaryDirectory() as out_dir:
                trainer = build_trainer(length, mode, out_dir)
                for step in range(args.steps):
                    rec = run_step(trainer, step, targets)
                trainer.close()
            rec = {"bench": "long_responses", "max_new_tokens": length, "mode": mode, **rec}
            rec["advantages_frac"] = rec["advantages_s"] / rec["step_s"]
            rec["s_per_response_token"] = rec["step_s"] / rec["response_tokens"]
            rec["command"] = f"python bench/long_responses.py --lengths {length} --modes {mode}"
            common.emit({k: (round(v, 5) if isinstance(v, float) else v) for k, v in rec.items()}, args.out)


if __name__ == "__main__":
    main()
