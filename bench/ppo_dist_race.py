"""ppo_dist's side of the GRPO race: a shipped preset as it is, on a race task, time to a target reward.

    python bench/ppo_dist_race.py --preset configs/grpo.yaml --task digits --target 0.3 --seed 42

Only the model (the 3m body, dropout 0), the prompts, the reward function, the response length,
the step count and the seed are overridden (plus where the run writes, and no trackers); every
learning setting is the preset's. Time to target: wall time of the steps (start-up excluded) until
the moving average over --ma steps of the step's mean reward reaches --target. With dynamic sampling
the step's mean reward is over every sampled response (``rollout/sampled_reward_mean``), not only the
informative groups it trained on. One JSON line per step on stderr, a summary on stdout.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
import common  # noqa: E402
import race_tasks  # noqa: E402


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="configs/grpo.yaml")
    ap.add_argument("--task", choices=sorted(race_tasks.REWARDS), default="digits")
    ap.add_argument("--shape", choices=list(common.SHAPES), default="3m-nodrop")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--target", type=float, required=True)
    ap.add_argument("--ma", type=int, default=5)
    ap.add_argument("--max-steps", type=int, default=400)
    ap.add_argument("--time-limit", type=float, default=120.0)
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE",
                    help="sweep only: further overrides of the preset (the race itself passes none)")  # fmt: skip
    ap.add_argument("--out", help="append the summary JSON line to this file")
    return ap.parse_args()


def build_config(args, model_dir: Path, out_dir: str):
    from ppo_dist.config import from_dict
    from ppo_dist.config.loading import load_yaml

    data = load_yaml(args.preset)
    overrides = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"prompts": list(race_tasks.PROMPTS)},
        "reward": {"functions": [f"{BENCH / 'race_tasks.py'}:{args.task}"]},
        "rollout": {"max_new_tokens": args.max_new_tokens},
        "train": {"total_steps": args.max_steps, "seed": args.seed, "output_dir": out_dir},
        "log": {"trackers": [], "progress_bar": False},
    }
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        import yaml

        overrides.setdefault(section, {})[field] = yaml.safe_load(value)
    for section, fields in overrides.items():
        data.setdefault(section, {}).update(fields)
    return from_dict(data)


def kl_to_initial(experience, model_dir: Path) -> float:
    """Mean per-token k1 KL of the policy that sampled ``experience`` to the initial model, on its own
    samples (an unbiased estimate of the per-token KL, as TRL's logged k3 is). Outside the timed steps."""
    import torch

    from ppo_dist.models import CausalLMWithValueHead
    from ppo_dist.rl.roles import Reference

    initial = CausalLMWithValueHead.from_pretrained(str(model_dir), value_head=False).eval()
    with torch.no_grad():  # the trainer's own reference scoring, on the step's rollout
        ref = Reference(initial).logprobs(experience.rollout, [torch.arange(experience.logprobs.shape[0])])
    mask = experience.response_mask.float()
    return float(((experience.logprobs - ref) * mask).sum() / mask.sum())


def main() -> None:
    args = parse_args()
    common.set_threads(args.threads)
    from ppo_dist.rl.trainer import Trainer

    model_dir = common.ensure_model_dir(args.shape, seed=42)
    cfg = build_config(args, model_dir, tempfile.mkdtemp(prefix="ppo_dist_race_"))
    trainer = Trainer(cfg)
    records, reached = [], None
    t_start = time.perf_counter()
    for step in range(1, args.max_steps + 1):
        t0 = time.perf_counter()
        experience = trainer.learner.experience.make(step)
        stats = trainer.learner.learn(experience)
        reward = stats.get("rollout/sampled_reward_mean", stats["env/reward_mean"])
        window = [r["reward_mean"] for r in records[-(args.ma - 1) :]] + [reward]
        kl = stats.get("objective/kl")
        rec = {
            "step": step, "s": time.perf_counter() - t0, "reward_mean": reward, "ma": sum(window) / len(window),
            "kl_seq": kl, "resp_len_mean": stats["tokens/responses_len_mean"],
            "sampling_rounds": stats.get("rollout/sampling_rounds", 1.0),
        }  # fmt: skip
        rec["kl_token"] = None if kl is None else kl / max(rec["resp_len_mean"], 1.0)
        records.append(rec)
        print(common.json.dumps(rec), file=sys.stderr, flush=True)
        elapsed = time.perf_counter() - t_start
        if len(records) >= args.ma and rec["ma"] >= args.target:
            reached = (step, elapsed)
            rec["kl_to_initial"] = kl_to_initial(experience, model_dir)
            break
        if elapsed > args.time_limit:
            break
    at = records[reached[0] - 1] if reached else None
    summary = {
        "system": "ppo_dist-" + Path(args.preset).stem + ("+" + ",".join(args.set) if args.set else ""),
        "preset": args.preset,
        "task": args.task,
        "seed": args.seed,
        **common.target_summary(args.target, reached, len(records)),
        "s_per_step": round(common.median([r["s"] for r in records[1:] or records]), 4),
        "samples_per_step": cfg.rollout.batch_size * cfg.rollout.n_samples_per_prompt,
        # objective/kl: the mean over samples of the summed per-token log-ratio to the reference (k1);
        # kl_token divides it by the mean response length.
        "kl_seq_at_target": round(at["kl_seq"], 4) if at and at["kl_seq"] is not None else None,
        "kl_token_at_target": round(at["kl_token"], 5) if at and at["kl_token"] is not None else None,
        "kl_to_initial_at_target": round(at["kl_to_initial"], 5) if at else None,
        "best_ma": max(r["ma"] for r in records),
        "command": " ".join(["python", *sys.argv]),
    }
    common.emit(summary, args.out)
    trainer.close()


if __name__ == "__main__":
    main()
