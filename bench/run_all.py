"""Every benchmark in one command, back to back, then BENCHMARKS.md written from the results.

    python bench/run_all.py                      # about 15 minutes on a 2-core CPU machine
    python bench/run_all.py --skip-124m          # a few minutes

1. same settings, per shape: legacy trl 0.11.4 PPOTrainer (its own venv) then ppo_dist, fp32;
   on 124m also ppo_dist with bf16 autocast;
2. scaling: ppo_dist on 1 process (2 threads) vs 2 processes (1 thread each) on the 3m shape;
3. time to a target reward: current TRL GRPOTrainer (its own venv) vs ppo_dist, notebook settings.
Each run appends its summary line to bench/out/results.jsonl; BENCHMARKS.md is rendered from the
lines of this invocation only (no hand-typed numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
import venvs  # noqa: E402

RESULTS = BENCH / "out" / "results.jsonl"


def run(cmd: list[str], env: dict | None = None) -> dict:
    print("+", " ".join(cmd), flush=True)
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    record["command"] = " ".join("python" if c == sys.executable else str(c).replace(str(REPO) + "/", "") for c in cmd)
    with open(RESULTS, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
    print("  ", {k: record.get(k) for k in ("system", "shape", "s_per_step", "time_to_target_s")}, flush=True)
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-124m", action="store_true")
    ap.add_argument("--steps", type=int, default=12, help="steps per small shape (2 of warm-up)")
    ap.add_argument("--big-steps", type=int, default=4, help="steps on 124m (1 of warm-up)")
    ap.add_argument("--target", type=float, default=1.0, help="moving-average (5 steps) reward target")
    ap.add_argument("--target-shape", default="3m")
    ap.add_argument("--time-limit", type=float, default=180.0, help="seconds per time-to-target run")
    ap.add_argument("--output", default=str(REPO / "BENCHMARKS.md"))
    args = ap.parse_args()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    legacy_py, trl_py = venvs.ensure("legacy"), venvs.ensure("trl")
    py = sys.executable
    rows: dict[str, list[dict]] = {"same": [], "scaling": [], "target": []}

    shapes = ["150k", "3m"] + ([] if args.skip_124m else ["124m"])
    for shape in shapes:
        steps = ["--steps", str(args.big_steps), "--warmup", "1"] if shape == "124m" else ["--steps", str(args.steps)]
        legacy = run([str(legacy_py), "bench/legacy_trl_ppo.py", "--shape", shape, *steps])
        ours = run([py, "bench/ppo_dist_step.py", "--shape", shape, *steps])
        rows["same"].append({"legacy": legacy, "ours": ours})
        if shape == "124m":
            rows["same"].append({"legacy": legacy, "ours": run([py, "bench/ppo_dist_step.py", "--shape", shape, *steps, "--precision", "bf16"])})

    one = run([py, "bench/ppo_dist_step.py", "--shape", "3m", "--steps", str(args.steps)])
    two = run([py, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "bench/ppo_dist_step.py", "--shape", "3m",
               "--steps", str(args.steps), "--threads", "1"], env={"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"})
    rows["scaling"] = [one, two]

    target = ["--shape", args.target_shape, "--target", str(args.target), "--time-limit", str(args.time_limit)]
    grpo = run([str(trl_py), "bench/trl_grpo.py", *target, "--max-rollouts", "100000"])
    ours = run([py, "bench/ppo_dist_step.py", *target, "--steps", "100000"])
    rows["target"] = [grpo, ours]
    Path(args.output).write_text(render(rows, args), encoding="utf-8")
    print(f"wrote {args.output}")


def _f(x, digits=3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def render(rows: dict, args) -> str:
    import torch
    import transformers

    any_legacy = rows["same"][0]["legacy"]
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `python bench/run_all.py{' --skip-124m' if args.skip_124m else ''}` on {time.strftime('%Y-%m-%d')}: "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU; Python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__} (ppo_dist); legacy side: trl "
        f"{any_legacy.get('trl')}, transformers {any_legacy.get('transformers')} in bench/.venvs/legacy. "
        "All numbers below come from that one run (raw lines: bench/out/results.jsonl).",
        "",
        "## Same settings: ppo_dist vs legacy trl 0.11.4 PPOTrainer",
        "",
        "GPT-2-shaped models built from a config with the same seeded weights and tokenizer; the notebook's "
        "Chinese prompts and rule reward; batch 8, mini-batch 2, 4 PPO epochs, 32 new tokens, sampling, seed 42, "
        "2 threads. Seconds per PPO step are medians over the steps after warm-up.",
        "",
        "| shape | params | system | s/step | generate | reward | optimise | peak RSS MB | ratio ppo_dist / legacy | command |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pair in rows["same"]:
        leg, ours = pair["legacy"], pair["ours"]
        for r, ratio in ((leg, ""), (ours, f"**{ours['s_per_step'] / leg['s_per_step']:.2f}**")):
            lines.append(f"| {r['shape']} | {r['params']:,} | {r['system']} | {_f(r['s_per_step'])} | {_f(r['gen_s'])} | "
                         f"{_f(r['reward_s'], 4)} | {_f(r['opt_s'])} | {r['peak_rss_mb']:.0f} | {ratio} | `{r['command']}` |")
    one, two = rows["scaling"]
    lines += [
        "",
        "## Scaling: 1 vs 2 processes (3m shape, CPU)",
        "",
        "Each process runs batch 8 (legacy semantics); 2 processes update on 16 samples per step. "
        "The machine has 2 cores: 1 process uses both as threads, 2 processes use one each.",
        "",
        "| processes | threads each | s/step | samples/s | speed-up | command |",
        "|---|---|---|---|---|---|",
        f"| 1 | {one['threads']} | {_f(one['s_per_step'])} | {_f(one['samples_per_s'], 1)} | 1.00 | `{one['command']}` |",
        f"| 2 | {two['threads']} | {_f(two['s_per_step'])} | {_f(two['samples_per_s'], 1)} | "
        f"{two['samples_per_s'] / one['samples_per_s']:.2f} | `{two['command']}` |",
    ]
    grpo, ours = rows["target"]
    lines += [
        "",
        f"## Time to a target reward: ppo_dist PPO vs current TRL GRPOTrainer ({args.target_shape} shape)",
        "",
        f"Target: the 5-step moving average of the batch-mean rule reward reaches {args.target} (untrained models "
        "stay below 0.96 with learning off, bench/README.md). Notebook settings for both (lr 1.41e-5, KL 0.2, "
        "8 completions and 16 optimiser steps per rollout; GRPO: 2 prompts x 4 completions, no value head). "
        f"Each run stops at {args.time_limit:.0f} s.",
        "",
        "| system | reached | rollout steps | time to target s | s/step | command |",
        "|---|---|---|---|---|---|",
    ]
    for r in (grpo, ours):
        lines.append(f"| {r['system']} | {r.get('reached_target')} | {r.get('steps_to_target') or r.get('steps_run') or r.get('rollout_steps_run')} | "
                     f"{_f(r.get('time_to_target_s'), 1)} | {_f(r['s_per_step'])} | `{r['command']}` |")
    if grpo.get("time_to_target_s") and ours.get("time_to_target_s"):
        lines += ["", f"Ratio of times to target, ppo_dist / GRPO: **{ours['time_to_target_s'] / grpo['time_to_target_s']:.2f}**."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
