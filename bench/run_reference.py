"""One command for the reference side of the benchmarks.

    python bench/run_reference.py                          # everything below, default sizes
    python bench/run_reference.py --shapes 150k 3m --legacy-steps 12 --skip-grpo
    python bench/run_reference.py --skip-legacy --grpo-shape 3m --grpo-target 1.0 --grpo-time-limit 240

Steps: 1. ensure bench/.venvs/{legacy,trl} (bench/venvs.py); 2. build the model dirs into
bench/out/models/<shape> (bench/common.py, inside the legacy venv so the project env is not needed);
3. run bench/legacy_trl_ppo.py per shape in the legacy venv (124m gets --big-steps steps);
4. run bench/trl_grpo.py (time to target) in the trl venv. Each run's summary JSON line is appended to
bench/out/reference.jsonl, per-step lines to bench/out/steps.jsonl, logs to bench/out/logs/.
Runs are sequential so they never share the 2 cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import venvs  # noqa: E402

OUT = BENCH / "out"


def run(py: Path, script: str, args: list[str], log_name: str) -> int:
    cmd = [str(py), str(BENCH / script), *args]
    log = OUT / "logs" / f"{log_name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print("+", " ".join(cmd), f"  (log: {log.relative_to(BENCH.parent)})", flush=True)
    t = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, cwd=BENCH.parent)
    f_out = rc.stdout.strip()
    if f_out:
        print(f_out, flush=True)
    print(f"  -> rc {rc.returncode} in {time.perf_counter() - t:.0f} s", flush=True)
    return rc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["150k", "3m", "124m"], help="legacy PPO shapes")
    ap.add_argument("--legacy-steps", type=int, default=12, help="steps per small shape (warm-up included)")
    ap.add_argument("--big-steps", type=int, default=4, help="steps for 124m (warm-up 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--grpo-shape", default="150k")
    ap.add_argument("--grpo-target", type=float, default=1.0)
    ap.add_argument("--grpo-max-rollouts", type=int, default=2000)
    ap.add_argument("--grpo-time-limit", type=float, default=240.0, help="seconds")
    ap.add_argument("--skip-legacy", action="store_true")
    ap.add_argument("--skip-grpo", action="store_true")
    ap.add_argument("--out", default=str(OUT / "reference.jsonl"))
    args = ap.parse_args()

    # 1. Virtual environments.
    legacy_py = venvs.ensure("legacy") if not args.skip_legacy else None
    trl_py = venvs.ensure("trl") if not args.skip_grpo else None
    # 2. Model dirs (identical weights for every system; built once, reused).
    py = legacy_py or trl_py
    shapes = set(args.shapes if not args.skip_legacy else []) | ({args.grpo_shape} if not args.skip_grpo else set())
    for shape in sorted(shapes):
        subprocess.run([str(py), str(BENCH / "common.py"), "--shape", shape], check=True, cwd=BENCH.parent)

    failures = 0
    common_args = ["--threads", str(args.threads), "--out", args.out, "--steps-out", str(OUT / "steps.jsonl")]
    # 3. Legacy trl 0.11.4 PPO.
    if not args.skip_legacy:
        for shape in args.shapes:
            steps, warm = (args.big_steps, 1) if shape == "124m" else (args.legacy_steps, 2)
            failures += (
                run(
                    legacy_py,
                    "legacy_trl_ppo.py",
                    ["--shape", shape, "--steps", str(steps), "--warmup", str(warm), *common_args],
                    f"legacy_{shape}",
                )
                != 0
            )
    # 4. Current TRL GRPO, time to target.
    if not args.skip_grpo:
        failures += (
            run(
                trl_py,
                "trl_grpo.py",
                [
                    "--shape",
                    args.grpo_shape,
                    "--target",
                    str(args.grpo_target),
                    "--max-rollouts",
                    str(args.grpo_max_rollouts),
                    "--time-limit",
                    str(args.grpo_time_limit),
                    *common_args,
                ],
                f"grpo_{args.grpo_shape}",
            )
            != 0
        )
    print(f"summaries appended to {args.out}", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
