"""ppo_dist side of the same-settings benchmark: the legacy loop, on ppo_dist's compatibility API.

Runs in the project's environment. Same model dir, tokenizer, prompts, reward and settings as
bench/legacy_trl_ppo.py (all from bench/common.py); the loop is the same generate / decode +
reward / step, so the two per-step times compare like for like.

    python bench/ppo_dist_step.py --shape 3m --steps 12
    OMP_NUM_THREADS=1 ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 \
        bench/ppo_dist_step.py --shape 3m --steps 12 --threads 1          # scaling: 2 processes

Prints one JSON line per step on stderr and one summary line on stdout (appended to --out). With
several processes every process runs ``batch_size`` samples (legacy semantics) and the summary,
from the main process, reports samples/s over all of them and the peak RSS of the largest process.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

SYSTEM = "ppo_dist"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(common.SHAPES), default="150k")
    ap.add_argument("--steps", type=int, default=12, help="PPO steps to run (warm-up included)")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads per process")
    ap.add_argument("--model-dir", help="model dir (default bench/out/models/<shape>, built when absent)")
    ap.add_argument(
        "--precision", choices=["no", "bf16"], default="no", help="accelerate mixed precision (bf16 autocast)"
    )
    ap.add_argument("--learning-rate", type=float, default=common.SETTINGS["learning_rate"])
    ap.add_argument("--packing", action="store_true", help="ppo.packing: forwards on packed samples, not padded")
    ap.add_argument("--target", type=float, help="also stop once the --ma-step moving-average reward reaches this")
    ap.add_argument("--ma", type=int, default=5)
    ap.add_argument("--time-limit", type=float, help="stop after this many seconds of steps")
    ap.add_argument("--out", help="append the summary JSON line to this file")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    common.set_threads(args.threads)
    import torch
    import transformers

    from ppo_dist import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
    from ppo_dist.runtime.distributed import reduce_max

    S = common.SETTINGS
    model_dir = common.ensure_model_dir(args.shape, args.model_dir, seed=S["seed"])
    tokenizer = common.load_tokenizer(model_dir)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(model_dir))
    n_params = sum(p.numel() for p in model.pretrained_model.parameters())
    config = PPOConfig(
        model_name=str(model_dir),
        learning_rate=args.learning_rate,
        batch_size=S["batch_size"],
        mini_batch_size=S["mini_batch_size"],
        gradient_accumulation_steps=1,
        ppo_epochs=S["ppo_epochs"],
        init_kl_coef=S["init_kl_coef"],
        adap_kl_ctrl=S["adap_kl_ctrl"],
        cliprange=S["cliprange"],
        cliprange_value=S["cliprange_value"],
        vf_coef=S["vf_coef"],
        seed=S["seed"],
        log_with=None,
        max_new_tokens=S["max_new_tokens"],
        accelerator_kwargs={"mixed_precision": args.precision},
        packing=args.packing,
    )
    trainer = PPOTrainer(config, model, None, tokenizer)  # ref_model=None: a frozen copy, as legacy's second load
    acc = trainer.accelerator
    gen_kwargs = dict(
        min_length=S["min_length"],
        top_k=S["top_k"],
        top_p=S["top_p"],
        temperature=S["temperature"],
        do_sample=S["do_sample"],
        max_new_tokens=S["max_new_tokens"],
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    encoded = {p: torch.tensor(tokenizer.encode(p), dtype=torch.long) for p in common.PROMPTS}

    records, reached = [], None
    t_loop = time.perf_counter()
    for step in range(args.steps):
        # Each process takes its own slice of the prompt cycle.
        prompts = common.prompt_batch(step * acc.num_processes + acc.process_index, S["batch_size"])
        queries = [encoded[p] for p in prompts]
        t_step = time.perf_counter()
        with common.Timer() as t_gen:
            responses = trainer.generate(queries, return_prompt=False, batch_size=S["batch_size"], **gen_kwargs)
        with common.Timer() as t_rew:
            texts = [tokenizer.decode(r, skip_special_tokens=True) for r in responses]
            rewards = common.rule_reward(texts)
        with common.Timer() as t_opt:
            stats = trainer.step(queries, responses, [torch.tensor(r) for r in rewards])
        rec = {
            "event": "step",
            "system": SYSTEM,
            "shape": args.shape,
            "step": step,
            "s": time.perf_counter() - t_step,
            "gen_s": t_gen.s,
            "reward_s": t_rew.s,
            "opt_s": t_opt.s,
            "reward_mean": stats["env/reward_mean"],
            "resp_len_mean": stats["tokens/responses_len_mean"],
            "kl": stats["objective/kl"],
        }
        window = ([r["reward_mean"] for r in records] + [rec["reward_mean"]])[-args.ma :]
        rec["ma"] = sum(window) / len(window)
        records.append(rec)
        if acc.is_main_process:
            print(common.json.dumps(rec, ensure_ascii=False), file=sys.stderr, flush=True)
        elapsed = time.perf_counter() - t_loop
        if args.target is not None and len(records) >= args.ma and rec["ma"] >= args.target:
            reached = (len(records), elapsed)
            break
        if args.time_limit is not None and elapsed > args.time_limit:
            break

    timed = records[args.warmup :] or records
    s_med = common.median([r["s"] for r in timed])
    peak = reduce_max(acc, torch.tensor([common.peak_rss_mb()])).item()
    summary = {
        "system": SYSTEM
        + ("" if acc.num_processes == 1 else f"-{acc.num_processes}proc")
        + ("-bf16" if args.precision == "bf16" else "")
        + ("-packed" if args.packing else ""),
        "shape": args.shape,
        "params": n_params,
        "processes": acc.num_processes,
        "steps": len(timed),
        "warmup": args.warmup,
        "s_per_step": s_med,
        "gen_s": common.median([r["gen_s"] for r in timed]),
        "reward_s": common.median([r["reward_s"] for r in timed]),
        "opt_s": common.median([r["opt_s"] for r in timed]),
        "samples_per_s": S["batch_size"] * acc.num_processes / s_med,
        "slow_steps": sum(r["s"] > 3 * s_med for r in timed),
        "peak_rss_mb": round(peak, 1),
        **(
            {
                "target": args.target,
                "reached_target": reached is not None,
                "steps_to_target": reached[0] if reached else None,
                "time_to_target_s": reached[1] if reached else None,
                "steps_run": len(records),
            }
            if args.target is not None
            else {}
        ),
        "reward_first": records[0]["reward_mean"],
        "reward_last": records[-1]["reward_mean"],
        "resp_len_mean": sum(r["resp_len_mean"] for r in records) / len(records),
        "batch_size": S["batch_size"],
        "mini_batch_size": S["mini_batch_size"],
        "ppo_epochs": S["ppo_epochs"],
        "max_new_tokens": S["max_new_tokens"],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        **common.host_info(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if acc.is_main_process:
        common.emit(summary, args.out)
    trainer.end()


if __name__ == "__main__":
    main()
