"""Reference benchmark: the legacy trl 0.11.4 PPOTrainer loop (the seed notebook's API).

Runs inside bench/.venvs/legacy (created by bench/venvs.py); never in the project's environment.

    python bench/venvs.py legacy
    bench/.venvs/legacy/bin/python bench/legacy_trl_ppo.py --shape 150k --steps 12
    bench/.venvs/legacy/bin/python bench/legacy_trl_ppo.py --shape 150k --steps 2000 --target 1.0 --time-limit 240
    bench/.venvs/legacy/bin/python bench/legacy_trl_ppo.py --shape 124m --steps 4 --warmup 1 \
        --out bench/out/reference.jsonl --steps-out bench/out/legacy_124m_steps.jsonl

One step = generate 8 responses (one batched ``ppo_trainer.generate`` call, ``batch_size=8``),
decode + rule reward, ``ppo_trainer.step``. Settings come from bench/common.py (SETTINGS).
Prints one JSON line per step on stderr (and to --steps-out), then one summary JSON line on stdout
(appended to --out): median s/step over the steps after --warmup, split into gen/reward/opt.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SYSTEM = "trl-0.11.4-ppo"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(common.SHAPES), default="150k", help="model shape (bench/common.py SHAPES)")
    ap.add_argument("--steps", type=int, default=12, help="PPO steps to run (warm-up included)")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (and OMP_NUM_THREADS)")
    ap.add_argument(
        "--precision",
        choices=["no", "bf16"],
        default="no",
        help="accelerate mixed precision (PPOConfig.accelerator_kwargs): bf16 autocasts the prepared model's forward",
    )
    ap.add_argument("--model-dir", help="model dir (default bench/out/models/<shape>, built when absent)")
    ap.add_argument("--target", type=float, help="also stop once the --ma-step moving-average reward reaches this")
    ap.add_argument("--ma", type=int, default=5, help="moving-average window for --target, in steps")
    ap.add_argument("--time-limit", type=float, help="stop after this many seconds of steps")
    ap.add_argument("--out", help="append the summary JSON line to this file")
    ap.add_argument("--steps-out", help="append the per-step JSON lines to this file")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.steps <= args.warmup:
        raise SystemExit(f"--steps ({args.steps}) must be larger than --warmup ({args.warmup})")
    common.set_threads(args.threads)

    import torch
    import transformers
    import trl
    from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

    S = common.SETTINGS
    model_dir = common.ensure_model_dir(args.shape, args.model_dir, seed=S["seed"])
    tokenizer = common.load_tokenizer(model_dir)

    # 1. Models: policy with value head, frozen reference (a second copy, as the notebook did).
    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(model_dir))
    ref_model = AutoModelForCausalLMWithValueHead.from_pretrained(str(model_dir))
    n_params = sum(p.numel() for p in model.pretrained_model.parameters())

    # 2. PPOConfig: every knob that matters written out (steps is ignored by PPOTrainer.step loops).
    config = PPOConfig(
        model_name=str(model_dir),
        learning_rate=S["learning_rate"],
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
        accelerator_kwargs={"mixed_precision": args.precision},
    )
    ppo_trainer = PPOTrainer(config, model, ref_model, tokenizer)  # calls set_seed(config.seed)

    gen_kwargs = dict(
        min_length=S["min_length"],  # -1: EOS may end a response early (the notebook's setting)
        top_k=S["top_k"],
        top_p=S["top_p"],
        temperature=S["temperature"],
        do_sample=S["do_sample"],
        max_new_tokens=S["max_new_tokens"],
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    # Prompts are tokenised once, like the notebook's dataset map; 1-D tensors, no padding.
    encoded = {p: torch.tensor(tokenizer.encode(p), dtype=torch.long) for p in common.PROMPTS}

    records = []
    reached = None  # (steps, seconds) when the moving-average reward first reached --target
    t_loop = time.perf_counter()
    for step in range(args.steps):
        prompts = common.prompt_batch(step, S["batch_size"])
        query_tensors = [encoded[p] for p in prompts]
        # The value-head wrapper starts in train mode but its body in eval mode; train_minibatch() calls
        # model.train(), so from step 1 on generation samples with GPT-2 dropout active.
        dropout_at_generate = ppo_trainer.model.pretrained_model.training
        t_step = time.perf_counter()
        # 3. Rollout: one batched generate call (batch_size=8; the legacy default is 4).
        with common.Timer() as t_gen:
            response_tensors = ppo_trainer.generate(
                query_tensors, return_prompt=False, batch_size=S["batch_size"], **gen_kwargs
            )
        # 4. Reward on the decoded completions.
        with common.Timer() as t_dec:
            texts = [tokenizer.decode(r, skip_special_tokens=True) for r in response_tensors]
        with common.Timer() as t_rew:
            rewards = common.rule_reward(texts)
        scores = [torch.tensor(r, dtype=torch.float32) for r in rewards]
        # 5. PPO optimisation: old logprobs/values + ref logprobs, then ppo_epochs x minibatches.
        with common.Timer() as t_opt:
            stats = ppo_trainer.step(query_tensors, response_tensors, scores)
        step_s = time.perf_counter() - t_step
        rec = {
            "event": "step",
            "system": SYSTEM,
            "shape": args.shape,
            "step": step,
            "s": step_s,
            "gen_s": t_gen.s,
            "decode_s": t_dec.s,
            "reward_s": t_rew.s,
            "opt_s": t_opt.s,
            "reward_mean": sum(rewards) / len(rewards),
            "resp_len_mean": sum(len(r) for r in response_tensors) / len(response_tensors),
            "resp_len_min": min(len(r) for r in response_tensors),
            "kl": float(stats["objective/kl"]),
            "kl_coef": float(stats["objective/kl_coef"]),
            "dropout_active_at_generate": dropout_at_generate,
            "sample": texts[0][:40],
        }
        window = ([r["reward_mean"] for r in records] + [rec["reward_mean"]])[-args.ma :]
        rec["ma"] = sum(window) / len(window)
        records.append(rec)
        print(common.json.dumps(rec, ensure_ascii=False), file=sys.stderr, flush=True)
        if args.steps_out:
            with open(args.steps_out, "a", encoding="utf-8") as f:
                f.write(common.json.dumps(rec, ensure_ascii=False) + "\n")
        elapsed = time.perf_counter() - t_loop
        if args.target is not None and reached is None and len(records) >= args.ma and rec["ma"] >= args.target:
            reached = (len(records), elapsed)
            break
        if args.time_limit is not None and elapsed > args.time_limit:
            break

    # 6. Summary over the post-warm-up steps.
    timed = records[args.warmup :] or records
    k = min(5, len(records))
    s_med = common.median([r["s"] for r in timed])
    summary = {
        "system": SYSTEM + ("-bf16" if args.precision == "bf16" else ""),
        "shape": args.shape,
        "params": n_params,
        "steps": len(timed),
        "warmup": args.warmup,
        "s_per_step": s_med,
        "gen_s": common.median([r["gen_s"] for r in timed]),
        "reward_s": common.median([r["decode_s"] + r["reward_s"] for r in timed]),
        "opt_s": common.median([r["opt_s"] for r in timed]),
        # steps slower than 3x the median: a sign of CPU contention from outside this process.
        "slow_steps": sum(r["s"] > 3 * s_med for r in timed),
        "peak_rss_mb": round(common.peak_rss_mb(), 1),
        **(
            {
                "target": args.target,
                "ma_window": args.ma,
                "reached_target": reached is not None,
                "steps_to_target": reached[0] if reached else None,
                "time_to_target_s": reached[1] if reached else None,
                "steps_run": len(records),
                "best_ma": max(r["ma"] for r in records[args.ma - 1 :]) if len(records) >= args.ma else None,
            }
            if args.target is not None
            else {}
        ),
        "reward_first": records[0]["reward_mean"],
        "reward_last": records[-1]["reward_mean"],
        f"reward_ma{k}_first": sum(r["reward_mean"] for r in records[:k]) / k,
        f"reward_ma{k}_last": sum(r["reward_mean"] for r in records[-k:]) / k,
        "resp_len_mean": sum(r["resp_len_mean"] for r in records) / len(records),
        "batch_size": S["batch_size"],
        "mini_batch_size": S["mini_batch_size"],
        "ppo_epochs": S["ppo_epochs"],
        "max_new_tokens": S["max_new_tokens"],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        **common.host_info(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    common.emit(summary, args.out)


if __name__ == "__main__":
    main()
