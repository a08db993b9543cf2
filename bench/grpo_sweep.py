"""Recipe sweep for the critic-free presets: candidate overrides of a preset, on every race task and seed.

    python bench/grpo_sweep.py                                   # the CANDIDATES below, 3 tasks x 3 seeds
    python bench/grpo_sweep.py --seeds 43 44 --candidate "optim.lr=3e-3 ppo.kl_coef=0"

Each candidate is a list of ``SECTION.FIELD=VALUE`` overrides of ``--preset`` (configs/grpo.yaml),
run through bench/ppo_dist_race.py ``--set`` on the tasks of bench/race_tasks.py (3m GPT-2 body,
dropout 0, 24 new tokens). Steps to target do not depend on the machine's load (every run is seeded
and single-process), so a sweep may share the machine; its times may not, and the race
(bench/grpo_race.py) is what gives time ratios. One summary line per run goes to ``--out``; the table
(medians over seeds; a missed target counts as ``--max-steps``) goes to stdout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from grpo_race import TARGETS, ppo_dist_cmd  # noqa: E402
from grpo_race import run as race_run  # noqa: E402

# Candidates on top of the shipped preset (BENCHMARKS.md has these and the earlier ones); the first is
# the preset itself, the second the recipe before it (beta 0.04).
CANDIDATES = [
    "",
    "ppo.kl_coef=0.04",
    "optim.lr=2.5e-3",
    "optim.adam_beta1=0.7",
    "ppo.loss_agg=seq_mean_token_sum_norm",
    "rollout.batch_size=4 ppo.mini_batch_size=16",
]


def run(preset: str, task: str, seed: int, overrides: list[str], args) -> dict:
    """One race run of ``preset`` with ``overrides`` (grpo_race's command and summary line)."""
    cmd = ppo_dist_cmd(task, seed, preset, args) + (["--set", *overrides] if overrides else [])
    return {**race_run(cmd, Path(args.out)), "overrides": overrides}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="configs/grpo.yaml")
    ap.add_argument("--candidate", action="append", help="overrides, space-separated (repeatable; default: CANDIDATES)")
    ap.add_argument("--tasks", nargs="*", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--seeds", nargs="*", type=int, default=[42, 43, 44])
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--time-limit", type=float, default=120.0)
    ap.add_argument("--out", default=str(BENCH / "out" / "sweep.jsonl"))
    args = ap.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    print("| overrides | " + " | ".join(f"{t} steps" for t in args.tasks) + " | KL/token at target | s/step |")
    print("|---|" + "---|" * (len(args.tasks) + 2))
    for candidate in args.candidate or CANDIDATES:
        overrides = candidate.split()
        steps, kls, secs = [], [], []
        for task in args.tasks:
            runs = [run(args.preset, task, seed, overrides, args) for seed in args.seeds]
            steps.append([r["steps_to_target"] if r["reached_target"] else args.max_steps for r in runs])
            kls += [r["kl_to_initial_at_target"] for r in runs if r["reached_target"]]
            secs += [r["s_per_step"] for r in runs]
        cells = [f"{statistics.median(s):g} ({', '.join(map(str, s))})" for s in steps]
        kl = f"{statistics.median(kls):.2f}" if kls else "—"
        name = candidate or "(as shipped)"
        print(f"| `{name}` | " + " | ".join(cells) + f" | {kl} | {statistics.median(secs):.3f} |")


if __name__ == "__main__":
    main()
