"""Every benchmark in one command, back to back, then BENCHMARKS.md written from the results.

    python bench/run_all.py                      # about 90 minutes on a 2-core CPU machine
    python bench/run_all.py --skip-124m --skip-zero   # a few minutes

0. the machine's dense matmul rate (2048x2048, fp32 and bf16), for the FLOP floors below;
1. same settings, per shape: legacy trl 0.11.4 PPOTrainer (its own venv) then ppo_dist, fp32 and
   with bf16 autocast (3m and 124m);
2. scaling: ppo_dist on 1 process (2 threads) vs 2 processes (1 thread each) on the 3m shape;
3. time to a target reward: current TRL GRPOTrainer (its own venv) vs ppo_dist, notebook settings;
4. memory per process under DDP and ZeRO-1/2/3/3+offload (bench/zero_memory.py, 2 processes);
5. time to a target reward per advantage estimator (ppo_dist grpo / rloo / gae vs TRL GRPOTrainer,
   identical settings, several seeds; bench/ppo_dist_estimators.py), and train.compile;
6. long responses: s/step by phase and peak memory at 256 / 1024 / 4096 new tokens, fixed vs
   token-budget micro-batches, and GAE alone up to 32k tokens (bench/long_responses.py);
7. memory of LoRA / gradient checkpointing on a GPT-2-medium shape, 2 processes (bench/lora_memory.py).
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
import common  # noqa: E402
import venvs  # noqa: E402
import zero_memory  # noqa: E402

RESULTS = BENCH / "out" / "results.jsonl"
LAST_RUN = BENCH / "out" / "last_run.json"  # the rows BENCHMARKS.md was rendered from
# glibc environment equivalent of ppo_dist's train.cpu_malloc_reuse (mallopt at start-up).
MALLOC_REUSE_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "2147483647"}


def run(cmd: list[str], env: dict | None = None, label: str = "", attempts: int = 1) -> dict:
    """Run one benchmark and append its summary (the last JSON line it prints; ``label`` added to
    its system) to RESULTS. With ``attempts`` > 1 a failed launch is tried again and the failure
    is kept in the record (``failed_attempts``) so the report can say so."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    failures = []
    for _ in range(attempts):
        print("+", " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True)
        if proc.returncode == 0:
            break
        tail = [line for line in proc.stderr.splitlines() if line.strip()][-30:]
        failures.append(
            next((line for line in tail if "terminate" in line or "Error" in line), tail[-1] if tail else "")
        )
    else:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}), {attempts} attempt(s):\n{proc.stderr[-3000:]}")
    record = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    if label:
        record["system"] += label
    if attempts > 1:
        record["failed_attempts"] = failures
    record["command"] = " ".join(
        [
            *(f"{k}={v}" for k, v in (env or {}).items() if k.startswith("MALLOC_")),
            *("python" if c == sys.executable else str(c).replace(str(REPO) + "/", "") for c in cmd),
        ]
    )
    with open(RESULTS, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
    print("  ", {k: record.get(k) for k in ("system", "mode", "shape", "s_per_step", "time_to_target_s")}, flush=True)
    return record


def matmul_peak_gflops(dtype_name: str, n: int = 2048, repeats: int = 10) -> float:
    """Dense n x n matmul rate on 2 threads: the ceiling the FLOP floors below are measured against."""
    import torch

    torch.set_num_threads(2)
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-124m", action="store_true")
    ap.add_argument("--steps", type=int, default=12, help="steps per small shape (2 of warm-up)")
    ap.add_argument("--big-steps", type=int, default=4, help="steps on 124m (1 of warm-up)")
    ap.add_argument("--target", type=float, default=1.0, help="moving-average (5 steps) reward target")
    ap.add_argument("--target-shape", default="3m")
    ap.add_argument("--time-limit", type=float, default=180.0, help="seconds per time-to-target run")
    ap.add_argument(
        "--repeats", type=int, default=2, help="rounds of the same-settings runs; the fastest of each is kept"
    )
    ap.add_argument("--skip-zero", action="store_true", help="leave out the ZeRO memory table")
    ap.add_argument("--zero-shape", default="124m", help="model shape for the ZeRO memory table")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="seeds of the estimator runs")
    ap.add_argument("--skip-estimators", action="store_true")
    ap.add_argument("--skip-long", action="store_true")
    ap.add_argument("--skip-lora", action="store_true")
    ap.add_argument("--output", default=str(REPO / "BENCHMARKS.md"))
    ap.add_argument(
        "--render-only", action="store_true", help=f"rewrite --output from the last run's saved rows ({LAST_RUN.name})"
    )
    args = ap.parse_args()
    if args.render_only:
        saved = json.loads(LAST_RUN.read_text(encoding="utf-8"))
        Path(args.output).write_text(
            render(saved["rows"], argparse.Namespace(**saved["args"]), saved["peaks"]), encoding="utf-8"
        )
        print(f"wrote {args.output} from {LAST_RUN}")
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    legacy_py, trl_py = venvs.ensure("legacy"), venvs.ensure("trl")
    py = sys.executable
    rows: dict[str, list] = {"same": [], "scaling": [], "target": [], "zero": [], "estimators": [], "long": [],
                             "gae": [], "lora": []}  # fmt: skip
    peaks = {"fp32": matmul_peak_gflops("float32"), "bf16": matmul_peak_gflops("bfloat16")}
    print("matmul GFLOP/s:", peaks, flush=True)

    shapes = ["150k", "3m"] + ([] if args.skip_124m else ["124m"])
    for shape in shapes:
        steps = ["--steps", str(args.big_steps), "--warmup", "1"] if shape == "124m" else ["--steps", str(args.steps)]
        legacy_cmd = [str(legacy_py), "bench/legacy_trl_ppo.py", "--shape", shape, *steps]
        ours_cmd = [py, "bench/ppo_dist_step.py", "--shape", shape, *steps]
        cmds = {"legacy": (legacy_cmd, None), "fp32": (ours_cmd, None)}
        if shape != "150k":
            # The legacy trainer with the allocator setting ppo_dist applies itself (train.cpu_malloc_reuse).
            cmds["legacy_malloc"] = (legacy_cmd, MALLOC_REUSE_ENV)
            cmds["legacy_bf16"] = ([*legacy_cmd, "--precision", "bf16"], None)
            cmds["bf16"] = ([*ours_cmd, "--precision", "bf16"], None)
        # The systems take turns, `--repeats` rounds; each keeps its fastest run (least disturbed by the host).
        runs: dict[str, list[dict]] = {k: [] for k in cmds}
        for _ in range(args.repeats):
            for k, (cmd, env) in cmds.items():
                runs[k].append(run(cmd, env, label=" +malloc-reuse" if env else ""))
        rows["same"].append([min(v, key=lambda r: r["s_per_step"]) for v in runs.values()])

    one = run([py, "bench/ppo_dist_step.py", "--shape", "3m", "--steps", str(args.steps)])
    two = run(
        [
            py,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "bench/ppo_dist_step.py",
            "--shape",
            "3m",
            "--steps",
            str(args.steps),
            "--threads",
            "1",
        ],
        env={"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"},
    )
    rows["scaling"] = [one, two]

    target = ["--shape", args.target_shape, "--target", str(args.target), "--time-limit", str(args.time_limit)]
    grpo = run([str(trl_py), "bench/trl_grpo.py", *target, "--max-rollouts", "100000"])
    ours = run([py, "bench/ppo_dist_step.py", *target, "--steps", "100000"])
    rows["target"] = [grpo, ours]
    if not args.skip_zero:
        # One mode per launch; a launch that fails (DeepSpeed offload once aborted at exit on CPU) is retried once.
        rows["zero"] = [
            run([py, "bench/zero_memory.py", "--shape", args.zero_shape, "--modes", mode], attempts=2)
            for mode in zero_memory.MODES
        ]
    if not args.skip_estimators:
        rows["estimators"] = run_estimators(args, py, trl_py)
    if not args.skip_long:
        rows["long"] = run_lines([py, "bench/long_responses.py"])
        rows["gae"] = run_lines([py, "bench/long_responses.py", "--gae-only"])
    if not args.skip_lora:
        rows["lora"] = run_lines([py, "bench/lora_memory.py"])
    LAST_RUN.write_text(
        json.dumps({"rows": rows, "peaks": peaks, "args": vars(args)}, ensure_ascii=False), encoding="utf-8"
    )
    Path(args.output).write_text(render(rows, args, peaks), encoding="utf-8")
    print(f"wrote {args.output}")


ESTIMATORS = ("grpo", "rloo", "gae")


def run_estimators(args, py: str, trl_py) -> list[dict]:
    """TRL GRPO and ppo_dist's estimators in turn, per seed: same target, time limit and settings."""
    target = ["--shape", args.target_shape, "--target", str(args.target), "--time-limit", str(args.time_limit)]
    out = []
    for seed in args.seeds:
        out.append(run([str(trl_py), "bench/trl_grpo.py", *target, "--max-rollouts", "100000", "--seed", str(seed)]))
        for name in ESTIMATORS:
            out.append(run([py, "bench/ppo_dist_estimators.py", *target, "--estimator", name, "--seed", str(seed)]))
    out.append(run([py, "bench/ppo_dist_estimators.py", *target, "--estimator", "grpo", "--compile",
                    "--seed", str(args.seeds[0])]))  # fmt: skip
    # One optimiser step per rollout (1 epoch, one mini-batch of 8): the on-policy shortcut on and off.
    fixed = ["--shape", args.target_shape, "--target", "99", "--max-steps", "12", "--estimator", "grpo",
             "--ppo-epochs", "1", "--mini-batch-size", "8"]  # fmt: skip
    for extra in ([], ["--no-shortcut"]):
        out.append(run([py, "bench/ppo_dist_estimators.py", *fixed, *extra]))
    return out


def run_lines(cmd: list[str]) -> list[dict]:
    """A benchmark that prints one JSON line per measurement: all of them, appended to RESULTS."""
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    with open(RESULTS, "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return records


def _f(x, digits=3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def step_flops(record: dict) -> float:
    """Model FLOPs of one PPO step at the notebook's settings (see BENCHMARKS.md for the formula)."""
    tokenizer = common.load_tokenizer(common.ensure_model_dir(record["shape"]))
    prompt_tokens = sum(len(tokenizer.encode(p)) for p in common.PROMPTS) / len(common.PROMPTS)
    n, b, resp = record["params"], record["batch_size"], record["resp_len_mean"]
    return 28 * n * b * (prompt_tokens + resp) + 2 * n * b * resp


def render(rows: dict, args, peaks: dict) -> str:
    import torch
    import transformers

    any_legacy = rows["same"][0][0]
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `python bench/run_all.py{' --skip-124m' if args.skip_124m else ''}` on "
        f"{time.strftime('%Y-%m-%d')}: "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU; Python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__} (ppo_dist); legacy side: trl "
        f"{any_legacy.get('trl')}, transformers {any_legacy.get('transformers')} in bench/.venvs/legacy. "
        "All numbers below come from that one run (raw lines: bench/out/results.jsonl).",
        "",
        "## Same settings: ppo_dist vs legacy trl 0.11.4 PPOTrainer",
        "",
        "GPT-2-shaped models built from a config with the same seeded weights and tokenizer; the notebook's "
        "Chinese prompts and rule reward; batch 8, mini-batch 2, 4 PPO epochs, 32 new tokens, sampling, seed 42, "
        f"2 threads. Seconds per PPO step are medians over the steps after warm-up; the systems ran in turn, "
        f"{args.repeats} rounds, and each row is that system's fastest round (this machine's 2 cores are shared "
        "with other work on the host, which slows single runs by up to ~20 %).",
        "",
        "Each ppo_dist row is compared with the legacy trainer at the same precision (bf16: accelerate autocast "
        "on both, the legacy side through `PPOConfig(accelerator_kwargs={'mixed_precision': 'bf16'})`); the "
        "`+malloc-reuse` row is the legacy trainer with the glibc setting ppo_dist applies itself on CPU "
        "(`train.cpu_malloc_reuse`), compared with plain legacy fp32.",
        "",
        "| shape | params | system | s/step | generate | reward | optimise | peak RSS MB | ratio to legacy, same "
        "precision | command |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for group in rows["same"]:
        for r in group:
            base = baseline(group, r)
            ratio = "" if base is None else f"**{r['s_per_step'] / base['s_per_step']:.2f}**"
            lines.append(
                f"| {r['shape']} | {r['params']:,} | {r['system']} | {_f(r['s_per_step'])} | {_f(r['gen_s'])} | "
                f"{_f(r['reward_s'], 4)} | {_f(r['opt_s'])} | {r['peak_rss_mb']:.0f} | {ratio} | `{r['command']}` |"
            )
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
        f"| 1 | {one['threads']} | {_f(one['s_per_step'])} | {_f(one['samples_per_s'], 1)} | 1.00 | "
        f"`{one['command']}` |",
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
        lines.append(
            f"| {r['system']} | {r.get('reached_target')} | "
            f"{r.get('steps_to_target') or r.get('steps_run') or r.get('rollout_steps_run')} | "
            f"{_f(r.get('time_to_target_s'), 1)} | {_f(r['s_per_step'])} | `{r['command']}` |"
        )
    if grpo.get("time_to_target_s") and ours.get("time_to_target_s"):
        lines += [
            "",
            "Ratio of times to target, ppo_dist / GRPO: "
            f"**{ours['time_to_target_s'] / grpo['time_to_target_s']:.2f}**.",
        ]
    if rows["zero"]:
        z = rows["zero"][0]
        lines += [
            "",
            f"## Memory per process: DDP vs DeepSpeed ZeRO ({z['shape']} shape, 2 CPU processes)",
            "",
            "One rollout + PPO update per mode (`python bench/zero_memory.py --shape " + z["shape"] + "`). Parameter, "
            "reference and optimizer bytes are what each rank really holds (under ZeRO-3 the local shards); RSS is "
            "the process's resident memory, max over the 2 ranks. On CPU everything lives in the same host memory: "
            "DeepSpeed's fp32 master partitions, communication buckets and (ZeRO-3) gathered copies during the step "
            "come on top, so RSS hardly shrinks and under ZeRO-3 grows; on GPUs the parameter and optimizer columns "
            "are what decides whether a model fits.",
            "",
            zero_memory.markdown(rows["zero"]),
        ]
        for r in rows["zero"]:
            for failure in r.get("failed_attempts", []):
                lines += [
                    "",
                    f"{r['mode']}: one launch failed and was run again (numbers above are from the rerun): `{failure}`",
                ]
    lines += render_estimators(rows.get("estimators", []), args)
    lines += render_long(rows.get("long", []), rows.get("gae", []))
    lines += render_lora(rows.get("lora", []))
    lines += analysis(rows, args, peaks)
    return "\n".join(lines) + "\n"


def _median(xs):
    xs = [x for x in xs if x is not None]
    return common.median(xs) if xs else None


def render_estimators(rows: list[dict], args) -> list[str]:
    if not rows:
        return []
    shortcut = [r for r in rows if "-1ep-" in r["system"]]
    rows = [r for r in rows if "-1ep-" not in r["system"]]
    systems = list(dict.fromkeys(r["system"] for r in rows))
    lines = [
        "",
        f"## Time to a target reward per estimator: ppo_dist vs TRL GRPOTrainer ({args.target_shape} shape)",
        "",
        "Identical settings for every system (bench/ppo_dist_estimators.py, bench/trl_grpo.py): the same seeded "
        "weights, prompts and rule reward; per rollout step 2 prompts x 4 samples, at most 32 new tokens, "
        "temperature 1; 4 epochs over mini-batches of 2 (16 optimiser steps), lr 1.41e-5 constant, no clipping "
        "of gradients, clip 0.2, beta 0.2 fixed (grpo: k3 in the loss as TRL; rloo and gae: k1 in the reward), "
        "fp32. Target: the 5-step moving average of the batch-mean reward reaches "
        f"{args.target}; each run stops at {args.time_limit:.0f} s. Seeds {', '.join(map(str, args.seeds))}: one row "
        "per system with the medians over seeds (a run that missed the target counts as its time limit).",
        "",
        "| system | reached (of seeds) | median rollout steps to target | median time to target s | s/step | "
        "optimise s/step | peak RSS MB | value head |",
        "|---|---|---|---|---|---|---|---|",
    ]
    summary = {}
    for system in systems:
        group = [r for r in rows if r["system"] == system]
        reached = [r for r in group if r.get("reached_target")]
        steps = _median([r.get("steps_to_target") or r.get("rollout_steps_run") or r.get("steps_run") for r in group])
        times = _median([r.get("time_to_target_s") or args.time_limit for r in group])
        summary[system] = (steps, times)
        lines.append(
            f"| {system} | {len(reached)}/{len(group)} | {_f(steps, 0)} | {_f(times, 1)} | "
            f"{_f(_median([r['s_per_step'] for r in group]))} | {_f(_median([r.get('opt_s') for r in group]))} | "
            f"{_f(_median([r.get('peak_rss_mb') for r in group]), 0)} | {'yes' if group[0].get('value_head') else 'no'}"
            " |"
        )
    lines += ["", "Per seed:", "", "| system | seed | reached | rollout steps | time to target s | command |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        steps = r.get("steps_to_target") or r.get("rollout_steps_run") or r.get("steps_run")
        lines.append(
            f"| {r['system']} | {r.get('seed')} | {r.get('reached_target')} | {steps} | "
            f"{_f(r.get('time_to_target_s'), 1)} | `{r['command']}` |"
        )
    if shortcut:
        lines += [
            "",
            "On-policy shortcut: GRPO with one optimiser step per rollout (1 epoch, one mini-batch of 8), 12 steps; "
            "with the shortcut the update's own forward gives the old logprobs, without it a separate pass does.",
            "",
            "| system | shortcut | s/step | optimise s/step | command |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['system']} | {r.get('on_policy_shortcut')} | {_f(r['s_per_step'])} | {_f(r.get('opt_s'))} | "
            f"`{r['command']}` |"
            for r in shortcut
        ]
    trl, ours = summary.get("trl-grpo"), summary.get("ppo_dist-grpo")
    if trl and ours and trl[1]:
        ratio = ours[1] / trl[1]
        met = ratio <= 0.5 and ours[0] <= trl[0]
        lines += [
            "",
            f"ppo_dist GRPO / TRL GRPO, median time to target: **{ratio:.2f}**; median rollout steps {_f(ours[0], 0)} "
            f"vs {_f(trl[0], 0)}. Target (≤ 0.5× the time, no more steps): **{'met' if met else 'not met'}**.",
        ]
    return lines


def render_long(rows: list[dict], gae: list[dict]) -> list[str]:
    if not rows and not gae:
        return []
    lines = [
        "",
        "## Long responses (3m shape, batch 8, 1 PPO epoch)",
        "",
        "`python bench/long_responses.py`: response lengths forced to spread uniformly from 16 to max_new_tokens; "
        "GAE with a value head, one optimiser step per rollout. fixed: micro-batches of 2 samples in shuffled "
        "order; tokens: a token budget of 2 x (16 + max_new_tokens) per micro-batch, samples sorted by length; "
        "packed: that budget in real tokens, each micro-batch packed end to end into rows (ppo.packing). "
        "Seconds of the second step, by phase; peak resident memory of that step.",
        "",
        "| max new tokens | micro-batches | generate s | logprob passes s | advantages s | update s | step s | "
        "advantages share | µs per response token | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['max_new_tokens']} | {r['mode']} | {_f(r['gen_s'], 2)} | {_f(r['logprobs_s'], 2)} | "
            f"{_f(r['advantages_s'], 4)} | {_f(r['update_s'], 2)} | {_f(r['step_s'], 2)} | "
            f"{100 * r['advantages_frac']:.3f} % | {1e6 * r['s_per_response_token']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    by = {(r["max_new_tokens"], r["mode"]): r for r in rows}
    longest = max((r["max_new_tokens"] for r in rows), default=None)
    if longest and (longest, "fixed") in by and (longest, "tokens") in by:
        ratio = by[(longest, "tokens")]["update_s"] / by[(longest, "fixed")]["update_s"]
        lines += ["", f"Update time, token budget / fixed size at {longest}: **{ratio:.2f}** (target ≤ 0.7)."]
    if longest and (longest, "tokens") in by and (longest, "packed") in by:
        packed, tokens = by[(longest, "packed")], by[(longest, "tokens")]
        lines += [
            "",
            f"Packed / token budget at {longest}: update **{packed['update_s'] / tokens['update_s']:.2f}**, "
            f"logprob passes **{packed['logprobs_s'] / tokens['logprobs_s']:.2f}**.",
        ]
    if gae:
        lines += [
            "",
            "GAE alone (`python bench/long_responses.py --gae-only`), B = 8, 2 threads: the blocked reverse scan "
            "ppo_dist uses vs the T x T decay matrix it replaced.",
            "",
            "| T | scan s | T x T matrix s |",
            "|---|---|---|",
        ]
        lines += [f"| {r['T']} | {_f(r['scan_s'], 4)} | {_f(r.get('matrix_s'), 4)} |" for r in gae]
    return lines


def render_lora(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    base = next((r for r in rows if r["mode"] == "full"), rows[0])
    lines = [
        "",
        "## Fitting bigger models: LoRA and gradient checkpointing (GPT-2-medium shape, 2 CPU processes)",
        "",
        "`python bench/lora_memory.py`: 24 layers x 1024, vocabulary 50257 (355M parameters), seeded; one "
        "rollout of 8 prompts x 128 new tokens, one PPO epoch over one mini-batch of 8, GAE with a value head, "
        "fp32, `train.cpu_malloc_reuse false` and `MALLOC_MMAP_THRESHOLD_=65536` (freed blocks leave the resident "
        "set, so it follows live memory). Peak resident memory of the second step, max over the 2 processes.",
        "",
        "| mode | trainable parameters | reference | peak MB / process | vs full | s/step | vs full | update s "
        "| command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['trainable_params']:,} | {r['reference']} | {r['peak_mb_per_process']} | "
            f"{r['peak_mb_per_process'] / base['peak_mb_per_process']:.2f} | {_f(r['s_per_step'], 1)} | "
            f"{r['s_per_step'] / base['s_per_step']:.2f} | {_f(r['update_s'], 1)} | `{r['command']}` |"
        )
    lora_gc = next((r for r in rows if r["mode"] == "lora_gc"), None)
    if lora_gc:
        mem = lora_gc["peak_mb_per_process"] / base["peak_mb_per_process"]
        time_ = lora_gc["s_per_step"] / base["s_per_step"]
        met = mem <= 0.4 and time_ <= 1.3
        lines += [
            "",
            f"LoRA + gradient checkpointing: **{mem:.2f}×** the full fine-tune's peak memory at **{time_:.2f}×** its "
            f"step time (target ≤ 0.4× at ≤ 1.3×: {'met' if met else 'not met'}).",
        ]
    return lines


TARGETS = {"3m": 1 / 3, "124m": 1 / 2}  # s/step of ppo_dist / legacy at identical settings


def _faster(ours: dict, grpo: dict) -> bool:
    return bool(ours.get("time_to_target_s")) and (
        not grpo.get("time_to_target_s") or ours["time_to_target_s"] < grpo["time_to_target_s"]
    )


def baseline(group: list[dict], r: dict) -> dict | None:
    """The plain legacy run a row is compared with: same precision; None for the legacy fp32 row itself."""
    legacy = {x["system"]: x for x in group if x["system"].startswith("trl-")}
    base = legacy.get("trl-0.11.4-ppo-bf16") if r["system"].endswith("bf16") else legacy.get("trl-0.11.4-ppo")
    return None if base is r else base


def _verdict(rows: dict, shape: str) -> str:
    group = next((g for g in rows["same"] if g[0]["shape"] == shape), None)
    if group is None:
        return ""
    ratios = {
        r["system"]: r["s_per_step"] / baseline(group, r)["s_per_step"]
        for r in group
        if r["system"].startswith("ppo_dist")
    }
    met = "met" if min(ratios.values()) <= TARGETS[shape] else "not met"
    said = ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
    return (
        f"ppo_dist / legacy at the same precision on {shape}: {said}, against a target of {TARGETS[shape]:.2f} ({met})."
    )


def analysis(rows: dict, args, peaks: dict) -> list[str]:
    """Where the targets stand and why, from this run's numbers."""
    lines = [
        "",
        "## Where the time goes, and the targets",
        "",
        f"Measured in this run: dense 2048² matmul {peaks['fp32']:.0f} GFLOP/s fp32, {peaks['bf16']:.0f} GFLOP/s bf16 "
        "(2 threads). One PPO step at these settings costs about 28·N·T + 2·N·8·R FLOPs (N parameters, T = 8 × "
        "(prompt + response) tokens, R response tokens): 2 old-policy/value and 2 reference forward FLOPs per "
        "parameter-token, 4 epochs × 6 for forward + backward, plus generation. The floor is that count at the "
        "matmul rate, with no overhead at all.",
        "",
        "| shape | system | s/step | FLOP floor fp32 s | FLOP floor bf16 s | model FLOP utilisation | target s/step "
        "| met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for group in rows["same"]:
        target = TARGETS.get(group[0]["shape"])
        for r in group:
            flops = step_flops(r)
            peak = peaks["bf16" if r["system"].endswith("bf16") else "fp32"]
            base = baseline(group, r)
            goal = f"≤ {target * base['s_per_step']:.3f}" if (r["system"].startswith("ppo_dist") and target) else ""
            met = ("yes" if r["s_per_step"] <= target * base["s_per_step"] else "**no**") if goal else ""
            lines.append(
                f"| {r['shape']} | {r['system']} | {_f(r['s_per_step'])} | {flops / peaks['fp32'] / 1e9:.3f} | "
                f"{flops / peaks['bf16'] / 1e9:.3f} | {flops / peak / 1e9 / r['s_per_step']:.0%} | {goal} | {met} |"
            )
    needs = [
        f"{g[0]['shape']} {step_flops(g[0]) / peaks['fp32'] / 1e9 / (TARGETS[g[0]['shape']] * g[0]['s_per_step']):.0%}"
        for g in rows["same"]
        if g[0]["shape"] in TARGETS
    ]
    fp32_need = (
        f" (at fp32 the targets would need this share of the dense-matmul peak over the whole step: {', '.join(needs)})"
        if needs
        else ""
    )
    grpo, ours = rows["target"]
    lines += [
        "",
        "What ppo_dist does about the cost, and what is left:",
        "",
        "- The legacy side runs at its best here: one batched `generate` call of 8 (the notebook's default would be "
        "batches of 4) and its own mini-batched forward passes. Most of its remaining cost is model FLOPs that any "
        "PPO at these settings must spend: 16 optimiser steps on mini-batches of 2 sequences, a reference pass and "
        "an old-policy pass. ppo_dist removes the overhead around them: one batched generate per rollout, logprobs "
        "only for response positions, from the last hidden state a chunk at a time as `logit[token] − logsumexp` "
        "(no full-vocabulary log-softmax), statistics reduced once per step, fused AdamW.",
        "- On CPU, glibc hands every freed block above its mmap threshold back to the kernel, so each weight copy, "
        "gradient and activation of a few MB costs fresh page faults at every micro-step. ppo_dist keeps freed "
        "memory for reuse (`train.cpu_malloc_reuse`, on by default: `mallopt` of the mmap and trim thresholds). "
        "The `+malloc-reuse` legacy rows run the legacy trainer with the same setting through glibc's environment "
        "variables, to show how much of the difference is that setting alone.",
        "- bf16 (`--precision bf16`, accelerate autocast) is where the larger shape gains: the dense-matmul rate is "
        f"{peaks['bf16'] / peaks['fp32']:.1f}× fp32 here{fp32_need}. Generation runs under autocast too, so each "
        "decoding step reads half-width weights cast once per `generate` call. What remains is autocast's casts: "
        "fp32 master weights to bf16 at each of the 18 forward passes per step, and gradients back to fp32. "
        "Keeping the weights themselves in bf16 would remove them but lose updates of lr 1.41e-5 to bf16 "
        "rounding, so it is not done.",
        "- On 3m the matrices are small (mini-batches of ~2 × 40 tokens, width 256): per-op dispatch and the "
        "sequential 32-token decoding loop weigh as much as FLOPs, and ppo_dist's transformers 5 GPT-2 has more "
        f"Python layers per forward call than the legacy venv's transformers 4.46. {_verdict(rows, '3m')}",
        "- Time to target vs GRPO: GRPO's group-relative advantage (4 completions per prompt) moves the rule reward "
        "in far fewer rollouts at lr 1.41e-5 than PPO, whose advantages come from a freshly initialised value head "
        f"and a KL penalty of 0.2 per token. Per rollout step ppo_dist took {_f(ours['s_per_step'])} s and GRPO "
        f"{_f(grpo['s_per_step'])} s; the gap in time to target is the number of steps, i.e. the algorithm at "
        f"these settings. Target (below GRPO's time): {'met' if _faster(ours, grpo) else 'not met'}. ppo_dist's "
        "own `grpo` estimator (section above) is the same algorithm in ppo_dist's engine.",
        "",
        "GPU numbers (tokens/s, peak memory, MFU on GPT-2 124M and a ~1B shape) are not in this file: no GPU was "
        "available to this project's runs. `bench/ppo_dist_step.py`, `bench/zero_memory.py`, "
        "`bench/lora_memory.py` and `bench/long_responses.py` run unchanged on a CUDA machine (`--precision bf16`; "
        "the memory benches report `torch.cuda.max_memory_allocated` there).",
    ]
    return lines


if __name__ == "__main__":
    main()
