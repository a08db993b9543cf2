"""Reference benchmark: current TRL's GRPOTrainer on the shared settings, time to a target reward.

Runs inside bench/.venvs/trl (created by bench/venvs.py); never in the project's environment.

    python bench/venvs.py trl
    bench/.venvs/trl/bin/python bench/trl_grpo.py --shape 150k --target 1.0 --max-rollouts 2000 --time-limit 240

Mapping of the PPO settings onto GRPO (defaults; every number is a flag):
  * one "rollout step" = one generation batch of 8 completions (SETTINGS batch_size), like one legacy
    PPO step: 2 prompts x num_generations 4 (GRPO needs >= 2 completions per prompt for its
    group-relative advantage; prompts cycle through the 16 shared ones, TRL's sampler shuffles them);
  * per_device_train_batch_size 2 (= mini_batch_size), steps_per_generation 4, num_iterations 4
    (= ppo_epochs): each generation batch is reused for 4 x 4 = 16 optimizer steps, as legacy PPO does;
  * beta 0.2 (= init_kl_coef, fixed: GRPO has no adaptive KL; beta > 0 also loads the reference
    model, so the reference forward is paid as in legacy PPO), epsilon 0.2 (= cliprange), lr 1.41e-5
    constant, no gradient clipping, gradient checkpointing off, fp32, max_completion_length 32,
    temperature 1, top_k 0, top_p 1. No value head (GRPO has none). TRL's own defaults are kept for
    loss_type ("dapo") and scale_rewards ("group").
Time to target: wall time from the first generation until the moving average over --ma rollout
steps of the batch-mean reward reaches --target. Bounded by --max-rollouts and --time-limit.
Prints one JSON line per rollout step on stderr (and to --steps-out), one summary line on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SYSTEM = "trl-grpo"


def parse_args() -> argparse.Namespace:
    S = common.SETTINGS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(common.SHAPES), default="150k")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (and OMP_NUM_THREADS)")
    ap.add_argument("--model-dir", help="model dir (default bench/out/models/<shape>, built when absent)")
    ap.add_argument("--target", type=float, default=1.0, help="target moving-average reward")
    ap.add_argument("--ma", type=int, default=5, help="moving-average window, in rollout steps")
    ap.add_argument("--max-rollouts", type=int, default=2000, help="stop after this many rollout steps")
    ap.add_argument("--time-limit", type=float, default=240.0, help="stop after this many seconds of training")
    ap.add_argument("--warmup", type=int, default=2, help="rollout steps left out of the s/step median")
    ap.add_argument("--num-generations", type=int, default=4, help="completions per prompt (divides batch 8)")
    ap.add_argument("--num-iterations", type=int, default=S["ppo_epochs"], help="reuses of each generation batch")
    ap.add_argument(
        "--learning-rate",
        type=float,
        default=S["learning_rate"],
        help="0 gives the no-learning control: how often the target is hit by sampling noise alone",
    )
    ap.add_argument("--beta", type=float, default=S["init_kl_coef"], help="KL coefficient (0 drops the ref model)")
    ap.add_argument("--seed", type=int, default=S["seed"], help="training seed (sampling, shuffling)")
    ap.add_argument(
        "--disable-dropout", action="store_true", help="GRPOConfig(disable_dropout=True); TRL's default keeps dropout"
    )
    ap.add_argument(
        "--task",
        choices=["notebook", "digits", "brief", "latin"],
        default="notebook",
        help="prompts and reward: the notebook's (common.py) or a race task (race_tasks.py)",
    )
    ap.add_argument("--max-new-tokens", type=int, default=S["max_new_tokens"])
    ap.add_argument(
        "--mini-batch-size",
        type=int,
        default=S["mini_batch_size"],
        help="completions per optimiser step; 8 = one optimiser step per generation batch",
    )
    ap.add_argument("--out", help="append the summary JSON line to this file")
    ap.add_argument("--steps-out", help="append the per-rollout-step JSON lines to this file")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    common.set_threads(args.threads)

    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    S = common.SETTINGS
    system = SYSTEM + ("-no-dropout" if args.disable_dropout else "")
    model_dir = common.ensure_model_dir(args.shape, args.model_dir, seed=S["seed"])
    tokenizer = common.load_tokenizer(model_dir)
    mini = args.mini_batch_size
    if args.task == "notebook":
        prompts, score = list(common.PROMPTS), common.rule_reward
    else:
        import race_tasks

        prompts, task_reward = list(race_tasks.PROMPTS), race_tasks.REWARDS[args.task]
        score = lambda texts: task_reward([], texts)  # noqa: E731
    steps_per_generation = S["batch_size"] // mini
    opt_steps_per_rollout = steps_per_generation * args.num_iterations

    # --- per-rollout bookkeeping, filled by the reward function and the generation wrapper ---
    rollouts: list[dict] = []
    state = {"t0": None, "reached_at": None, "stop": False}

    def reward_fn(prompts, completions, **_):
        with common.Timer() as t:
            r = score(completions)
        rollouts[-1].update(reward_s=t.s, reward_mean=sum(r) / len(r), n_completions=len(r), sample=completions[0][:40])
        return r

    reward_fn.__name__ = "rule_reward"

    tmp = tempfile.mkdtemp(prefix="grpo_bench_")
    config = GRPOConfig(
        output_dir=tmp,
        use_cpu=True,
        seed=args.seed,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=0.0,  # legacy PPOConfig.max_grad_norm=None: no clipping
        weight_decay=0.0,
        per_device_train_batch_size=mini,
        gradient_accumulation_steps=1,
        steps_per_generation=steps_per_generation,
        num_generations=args.num_generations,
        num_iterations=args.num_iterations,
        max_completion_length=args.max_new_tokens,
        temperature=S["temperature"],
        top_k=S["top_k"],
        top_p=S["top_p"],
        beta=args.beta,
        epsilon=S["cliprange"],
        gradient_checkpointing=False,
        disable_dropout=args.disable_dropout,
        bf16=False,
        fp16=False,
        max_steps=args.max_rollouts * opt_steps_per_rollout,
        logging_steps=opt_steps_per_rollout,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        dataloader_pin_memory=False,
        disable_tqdm=True,
    )
    dataset = Dataset.from_dict({"prompt": prompts})
    trainer = GRPOTrainer(
        model=str(model_dir),
        reward_funcs=reward_fn,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    n_params = sum(p.numel() for p in trainer.model.parameters())

    # Time the generation phase (generate + old/ref logprobs + reward) of every rollout step.
    original = trainer._generate_and_score_completions

    def timed_generate(batch):
        now = time.perf_counter()
        if state["t0"] is None:
            state["t0"] = now
        if rollouts:
            rollouts[-1]["s"] = now - rollouts[-1]["_start"]
        rollouts.append({"_start": now, "dropout_active_at_generate": trainer.model.training})
        out = original(batch)
        r = rollouts[-1]
        r["gen_s"] = time.perf_counter() - now - r.get("reward_s", 0.0)
        r["resp_len_mean"] = float(out["completion_mask"].sum(1).float().mean())
        return out

    trainer._generate_and_score_completions = timed_generate

    class StopAtTarget(TrainerCallback):
        def on_step_end(self, targs, tstate, control, **kw):
            if rollouts and "reward_mean" in rollouts[-1]:
                last = rollouts[-1]
                if "ma" not in last:
                    window = [r["reward_mean"] for r in rollouts[-args.ma :]]
                    last["ma"] = sum(window) / len(window)
                    if state["reached_at"] is None and len(rollouts) >= args.ma and last["ma"] >= args.target:
                        state["reached_at"] = (len(rollouts), time.perf_counter() - state["t0"])
            done_rollout = tstate.global_step % opt_steps_per_rollout == 0
            elapsed = time.perf_counter() - state["t0"] if state["t0"] else 0.0
            if done_rollout and (state["reached_at"] is not None or elapsed > args.time_limit):
                state["stop"] = True
                control.should_training_stop = True
            return control

        def on_log(self, targs, tstate, control, logs=None, **kw):
            if rollouts and logs and "kl" in logs:
                rollouts[-1]["kl_token"] = logs["kl"]

    trainer.add_callback(StopAtTarget())
    t_train = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its log dicts; stdout keeps only the summary
        trainer.train()
    t_end = time.perf_counter()
    if rollouts and "s" not in rollouts[-1]:
        rollouts[-1]["s"] = t_end - rollouts[-1]["_start"]

    for i, r in enumerate(rollouts):
        r.pop("_start", None)
        r["opt_s"] = r["s"] - r["gen_s"] - r.get("reward_s", 0.0)
        rec = {"event": "rollout", "system": system, "shape": args.shape, "step": i, **r}
        print(common.json.dumps(rec, ensure_ascii=False), file=sys.stderr, flush=True)
        if args.steps_out:
            with open(args.steps_out, "a", encoding="utf-8") as f:
                f.write(common.json.dumps(rec, ensure_ascii=False) + "\n")

    timed = rollouts[args.warmup :] or rollouts
    k = min(args.ma, len(rollouts))
    reached = state["reached_at"]
    s_med = common.median([r["s"] for r in timed])
    summary = {
        "system": system,
        "shape": args.shape,
        "params": n_params,
        "steps": len(timed),
        "warmup": args.warmup,
        "s_per_step": s_med,
        "gen_s": common.median([r["gen_s"] for r in timed]),
        "reward_s": common.median([r.get("reward_s", 0.0) for r in timed]),
        "opt_s": common.median([r["opt_s"] for r in timed]),
        # steps slower than 3x the median: a sign of CPU contention from outside this process.
        "slow_steps": sum(r["s"] > 3 * s_med for r in timed),
        "peak_rss_mb": round(common.peak_rss_mb(), 1),
        "seed": args.seed,
        "target": args.target,
        "ma_window": args.ma,
        "reached_target": reached is not None,
        "steps_to_target": reached[0] if reached else None,
        "time_to_target_s": reached[1] if reached else None,
        "rollout_steps_run": len(rollouts),
        "train_wall_s": t_end - t_train,
        "best_ma": max((r.get("ma", float("-inf")) for r in rollouts[args.ma - 1 :]), default=None),
        "reward_first": rollouts[0]["reward_mean"],
        "reward_last": rollouts[-1]["reward_mean"],
        f"reward_ma{k}_first": sum(r["reward_mean"] for r in rollouts[:k]) / k,
        f"reward_ma{k}_last": sum(r["reward_mean"] for r in rollouts[-k:]) / k,
        "resp_len_mean": sum(r["resp_len_mean"] for r in rollouts) / len(rollouts),
        "batch_size": S["batch_size"],
        "num_generations": args.num_generations,
        "mini_batch_size": mini,
        "num_iterations": args.num_iterations,
        "opt_steps_per_rollout": opt_steps_per_rollout,
        "beta": args.beta,
        "learning_rate": args.learning_rate,
        "loss_type": config.loss_type,
        "scale_rewards": config.scale_rewards,
        "max_new_tokens": args.max_new_tokens,
        "task": args.task,
        # TRL logs the mean per-token k3 KL to the reference when beta > 0 (no reference model otherwise).
        "kl_token_at_target": rollouts[reached[0] - 1].get("kl_token") if reached else None,
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
