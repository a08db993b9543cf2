"""ppo_dist's service trainer with each advantage estimator: time to a target reward, s/step, memory.

Runs in the project's environment, on the same model dir, prompts, reward and settings as
bench/trl_grpo.py (bench/common.py): per rollout step 2 prompts x 4 samples = 8 completions of at
most 32 tokens, 4 epochs over mini-batches of 2 (16 optimiser steps), lr 1.41e-5 constant, no
gradient clipping, beta 0.2 fixed, clip 0.2, fp32, seed 42. Per estimator, where the KL goes:

  grpo   beta * k3 KL in the loss (as TRL's GRPOTrainer), group z-scored rewards, no value head
  rloo   beta * k1 KL penalty in the reward (as TRL's RLOOTrainer), leave-one-out baseline, no value head
  gae    beta * k1 KL penalty in the reward (legacy PPO), value head (vf_coef 0.1), whitened GAE

    python bench/ppo_dist_estimators.py --shape 3m --estimator grpo --target 1.0 --time-limit 180

Time to target: wall time from the first rollout until the moving average over --ma rollout steps
of the batch-mean reward reaches --target. One JSON line per step on stderr, a summary on stdout.
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

KL = {"grpo": ("loss", "k3"), "dr_grpo": ("loss", "k3"), "rloo": ("reward", "k1"), "gae": ("reward", "k1")}
KL.update({"reinforce_pp": ("reward", "k1"), "reinforce_pp_baseline": ("reward", "k1")})


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(common.SHAPES), default="3m")
    ap.add_argument("--estimator", choices=sorted(KL), default="grpo")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model-dir", help="model dir (default bench/out/models/<shape>, built when absent)")
    ap.add_argument("--seed", type=int, default=common.SETTINGS["seed"])
    ap.add_argument("--prompts-per-step", type=int, default=2)
    ap.add_argument("--num-generations", type=int, default=4, help="samples per prompt")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action="store_true", help="train.compile: torch.compile the policy's forward")
    ap.add_argument(
        "--dropout", action="store_true", help="model.disable_dropout false: the model's dropout acts in the update"
    )
    ap.add_argument("--ppo-epochs", type=int, default=common.SETTINGS["ppo_epochs"])
    ap.add_argument("--mini-batch-size", type=int, default=common.SETTINGS["mini_batch_size"], help="samples")
    ap.add_argument(
        "--no-shortcut", action="store_true", help="ppo.on_policy_shortcut false (a separate old-logprob pass)"
    )
    ap.add_argument("--target", type=float, default=1.0)
    ap.add_argument("--ma", type=int, default=5)
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--time-limit", type=float, default=240.0)
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of the s/step median")
    ap.add_argument("--out", help="append the summary JSON line to this file")
    ap.add_argument("--steps-out", help="append the per-step JSON lines to this file")
    return ap.parse_args()


def build_config(args, model_dir: Path, out_dir: str):
    from ppo_dist.config import Config

    S = common.SETTINGS
    placement, kl_estimator = KL[args.estimator]
    cfg = Config()
    cfg.model.name_or_path, cfg.model.dtype = str(model_dir), args.precision
    cfg.data.prompts = list(common.PROMPTS)
    r = cfg.rollout
    r.batch_size, r.n_samples_per_prompt = args.prompts_per_step, args.num_generations
    r.max_new_tokens, r.temperature, r.top_k, r.top_p = S["max_new_tokens"], S["temperature"], S["top_k"], S["top_p"]
    p = cfg.ppo
    p.advantage_estimator, p.kl_placement, p.kl_estimator = args.estimator, placement, kl_estimator
    p.ppo_epochs, p.mini_batch_size, p.cliprange, p.cliprange_value = args.ppo_epochs, args.mini_batch_size, 0.2, 0.2
    p.on_policy_shortcut = not args.no_shortcut
    p.vf_coef, p.kl_coef, p.adaptive_kl, p.loss_agg = S["vf_coef"], S["init_kl_coef"], False, "token_mean"
    cfg.optim.lr, cfg.optim.max_grad_norm = S["learning_rate"], None
    cfg.reward.functions = ["chinese_rule"]  # the same rule as common.rule_reward (tests/test_bench_common.py)
    cfg.train.seed, cfg.train.total_steps, cfg.train.output_dir = args.seed, args.max_steps, out_dir
    cfg.log.trackers, cfg.log.progress_bar = [], False
    cfg.train.compile = args.compile
    cfg.model.disable_dropout = not args.dropout
    return cfg


def main() -> None:
    args = parse_args()
    common.set_threads(args.threads)
    from ppo_dist.rl.trainer import Trainer

    model_dir = common.ensure_model_dir(args.shape, args.model_dir, seed=common.SETTINGS["seed"])
    out_dir = tempfile.mkdtemp(prefix="ppo_dist_bench_")
    trainer = Trainer(build_config(args, model_dir, out_dir))
    system = f"ppo_dist-{args.estimator}" + ("-bf16" if args.precision == "bf16" else "")
    system += "-compile" if args.compile else ""
    system += "-dropout" if args.dropout else ""
    if (args.ppo_epochs, args.mini_batch_size) != (common.SETTINGS["ppo_epochs"], common.SETTINGS["mini_batch_size"]):
        system += f"-{args.ppo_epochs}ep-mb{args.mini_batch_size}" + ("-no-shortcut" if args.no_shortcut else "")
    records, reached = [], None
    t_start = time.perf_counter()
    for step in range(1, args.max_steps + 1):
        t0 = time.perf_counter()
        experience = trainer.learner.experience.make(step)
        t1 = time.perf_counter()
        stats = trainer.learner.learn(experience)
        t2 = time.perf_counter()
        timings = experience.timings
        opt_s = timings["time/logprobs"] + timings["time/advantages"] + t2 - t1
        window = [r["reward_mean"] for r in records[-(args.ma - 1) :]] + [stats["env/reward_mean"]]
        rec = {
            "event": "step", "system": system, "shape": args.shape, "step": step, "s": t2 - t0,
            "gen_s": timings["time/rollout"], "reward_s": timings["time/reward"], "opt_s": opt_s,
            "reward_mean": stats["env/reward_mean"], "ma": sum(window) / len(window),
            "kl": stats.get("objective/kl"), "resp_len_mean": stats["tokens/responses_len_mean"],
        }  # fmt: skip
        records.append(rec)
        print(common.json.dumps(rec), file=sys.stderr, flush=True)
        if args.steps_out:
            with open(args.steps_out, "a", encoding="utf-8") as f:
                f.write(common.json.dumps(rec) + "\n")
        elapsed = time.perf_counter() - t_start
        if reached is None and len(records) >= args.ma and rec["ma"] >= args.target:
            reached = (step, elapsed)
            break
        if elapsed > args.time_limit:
            break
    timed = records[args.warmup :] or records
    summary = {
        "system": system,
        "shape": args.shape,
        "estimator": args.estimator,
        "seed": args.seed,
        **common.target_summary(args.target, reached, len(records)),
        "s_per_step": round(common.median([r["s"] for r in timed]), 4),
        "gen_s": round(common.median([r["gen_s"] for r in timed]), 4),
        "opt_s": round(common.median([r["opt_s"] for r in timed]), 4),
        "peak_rss_mb": round(common.peak_rss_mb(), 1),
        "value_head": trainer.learner.policy.has_critic,
        "on_policy_shortcut": trainer.learner.experience.on_policy_shortcut,
        "command": " ".join(["python", *sys.argv]),
    }
    common.emit(summary, args.out)
    trainer.close()


if __name__ == "__main__":
    main()
