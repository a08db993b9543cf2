"""The GRPO race: ppo_dist's shipped presets against current TRL's GRPOTrainer at its best of a sweep.

    python bench/grpo_race.py                       # every task, 3 seeds, writes bench/out/race.jsonl
    python bench/grpo_race.py --tasks digits --seeds 42

Tasks and rewards: bench/race_tasks.py (3m GPT-2 body with dropout 0, 24 new tokens, temperature 1).
TRL (bench/.venvs/trl, made by bench/venvs.py) runs at 2 prompts x 4 samples per step, one optimiser
step per generation batch, lr constant, no gradient clipping; its sweep (lr 1e-4 / 3e-4 / 1e-3 x beta
0 / 0.04) runs on the first seed, and the config with the shortest time to target runs every seed.
ppo_dist runs each preset as shipped (bench/ppo_dist_race.py overrides only the model, prompts, reward,
response length, step count and seed). Runs alternate between the systems. Time to target: wall time
of the steps until the 5-step moving average of the step's mean reward reaches the task's target.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import venvs  # noqa: E402

TARGETS = {"digits": 0.3, "brief": 0.5, "latin": 0.5}
PRESETS = ["configs/grpo.yaml", "configs/dapo.yaml", "configs/gspo.yaml"]
TRL_SWEEP = [(lr, beta) for lr in (1e-4, 3e-4, 1e-3) for beta in (0.0, 0.04)]


def run(cmd: list[str], out: Path) -> dict:
    proc = subprocess.run(cmd, cwd=BENCH.parent, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"system"')]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    record = {**json.loads(lines[-1]), "command": " ".join(cmd)}
    with out.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return record


def trl_cmd(task: str, seed: int, lr: float, beta: float, args) -> list[str]:
    return [
        str(venvs.venv_python("trl")), "bench/trl_grpo.py", "--shape", "3m-nodrop", "--task", task,
        "--max-new-tokens", "24", "--mini-batch-size", "8", "--num-iterations", "1",
        "--learning-rate", str(lr), "--beta", str(beta), "--target", str(TARGETS[task]), "--seed", str(seed),
        "--max-rollouts", str(args.max_steps), "--time-limit", str(args.time_limit),
    ]  # fmt: skip


def ppo_dist_cmd(task: str, seed: int, preset: str, args) -> list[str]:
    return [
        sys.executable, "bench/ppo_dist_race.py", "--preset", preset, "--task", task, "--seed", str(seed),
        "--target", str(TARGETS[task]), "--max-steps", str(args.max_steps), "--time-limit", str(args.time_limit),
    ]  # fmt: skip


def time_or_limit(r: dict, limit: float) -> float:
    return r["time_to_target_s"] if r["reached_target"] else limit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="*", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--seeds", nargs="*", type=int, default=[42, 43, 44])
    ap.add_argument("--presets", nargs="*", default=PRESETS)
    ap.add_argument("--max-steps", type=int, default=100)
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--out", default=str(BENCH / "out" / "race.jsonl"))
    args = ap.parse_args()
    venvs.ensure("trl")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for task in args.tasks:
        first, rest = args.seeds[0], args.seeds[1:]
        results: dict[str, list[dict]] = {}
        # The first seed: TRL's sweep, interleaved with ppo_dist's presets.
        sweep = []
        for i, (lr, beta) in enumerate(TRL_SWEEP):
            sweep.append(run(trl_cmd(task, first, lr, beta, args), out))
            if i < len(args.presets):
                results.setdefault(args.presets[i], []).append(
                    run(ppo_dist_cmd(task, first, args.presets[i], args), out)
                )
        best = min(sweep, key=lambda r: time_or_limit(r, args.time_limit))
        best_lr, best_beta = best["learning_rate"], best["beta"]
        results["trl"] = [best]
        for seed in rest:
            results["trl"].append(run(trl_cmd(task, seed, best_lr, best_beta, args), out))
            for preset in args.presets:
                results.setdefault(preset, []).append(run(ppo_dist_cmd(task, seed, preset, args), out))
        trl_time = statistics.median(time_or_limit(r, args.time_limit) for r in results["trl"])
        for system, rs in results.items():
            med_time = statistics.median(time_or_limit(r, args.time_limit) for r in rs)
            kls = [r.get("kl_to_initial_at_target", r.get("kl_token_at_target")) for r in rs]
            kls = [k for k in kls if k is not None]
            name = f"trl lr {best_lr:g} beta {best_beta:g}" if system == "trl" else system
            rows.append({
                "task": task, "system": name, "reached": f"{sum(r['reached_target'] for r in rs)}/{len(rs)}",
                "median_steps": statistics.median(r["steps_to_target"] or args.max_steps for r in rs),
                "median_time_s": round(med_time, 2),
                "s_per_step": round(statistics.median(r["s_per_step"] for r in rs), 3),
                "kl_token_at_target": round(statistics.median(kls), 3) if kls else None,
                "time_vs_trl": round(med_time / trl_time, 2),
            })  # fmt: skip
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join("—" if r[c] is None else str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
