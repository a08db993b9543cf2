"""Per-rank memory of one PPO step under DDP and DeepSpeed ZeRO-1/2/3 (+offload), 2 processes.

    python bench/zero_memory.py                         # every mode, GPT-2 124M shape, ~10 min on 2 CPUs
    python bench/zero_memory.py --modes ddp zero3 --shape 3m

For each mode this launches itself under ``accelerate launch --config_file
accelerate_configs/<mode>.yaml --num_processes 2`` (CPU processes over gloo when CUDA is absent),
builds ppo_dist's Trainer on the ``--shape`` model dir (bench/common.py; reference model loaded
from the same dir), runs one rollout + PPO update and measures on every rank:

- ``policy_param_bytes`` / ``ref_param_bytes``: parameter bytes the rank really holds (under ZeRO-3
  the size of each parameter's local shard ``ds_tensor``, not the full tensor);
- ``optim_bytes``: optimizer-owned tensors: Adam moments plus DeepSpeed's fp32 master partitions
  (tensors that are not the model's own parameters);
- ``setup_peak_rss_mb``: peak RSS while building models and engines (under ZeRO-3 without
  zero.Init every rank builds the whole model on the host first);
- ``rollout_peak_rss_mb`` / ``update_peak_rss_mb`` / ``step_peak_rss_mb``: peak RSS during the
  rollout (generation, reward), during the PPO update (logprob/value passes, backward, optimizer), and
  the larger of the two (the kernel's high-water mark is reset through /proc/self/clear_refs between
  phases; ``--trim`` first returns memory freed during setup to the OS with glibc's malloc_trim);
  on a GPU machine also ``step_peak_gpu_mb``.

Prints one JSON line per mode (max over ranks, and each rank's numbers), then a Markdown table.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))
import common  # noqa: E402

MODES = ["ddp", "zero1", "zero2", "zero3", "zero3_offload"]
MiB = 1024 * 1024


def _rss_mb(field: str) -> float:
    """VmHWM (peak) or VmRSS (current) of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def _held_bytes(module) -> int:
    total = 0
    for p in module.parameters():
        local = p.ds_tensor if hasattr(p, "ds_tensor") else p  # ZeRO-3: this rank's shard
        total += local.numel() * local.element_size()
        if getattr(p, "ds_persist", False):  # ZeRO-3 keeps small parameters gathered as well
            total += p.ds_numel * p.element_size()
    return total


def _optimizer_bytes(optimizer, model) -> int:
    """Bytes of tensors the optimizer owns: Adam state, and master copies that are not model parameters."""
    import torch

    inner = optimizer
    while hasattr(inner, "optimizer"):  # accelerate wrapper -> DeepSpeed ZeRO optimizer -> torch AdamW
        inner = inner.optimizer
    model_ptrs = {p.data_ptr() for p in model.parameters()}
    total, seen = 0, set()
    # Walk the state, not param_groups: ZeRO-3 empties param_groups between its sub-group steps.
    for p, state in inner.state.items():
        for t in [p, *(v for v in state.values() if torch.is_tensor(v))]:
            if t.data_ptr() in seen or t.data_ptr() in model_ptrs or t.numel() <= 1:
                continue
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def worker(args) -> None:
    common.set_threads(1)
    import torch

    from ppo_dist.config import parse_args
    from ppo_dist.rl.trainer import Trainer

    model_dir = common.ensure_model_dir(args.shape, None, seed=common.SETTINGS["seed"])
    cfg = parse_args(
        [
            "--model.name_or_path",
            str(model_dir),
            "--model.ref_name_or_path",
            str(model_dir),
            "--rollout.batch_size",
            "2",
            "--ppo.mini_batch_size",
            "2",
            "--ppo.ppo_epochs",
            "1",
            "--rollout.max_new_tokens",
            str(args.max_new_tokens),
            "--log.trackers",
            "[]",
            "--log.progress_bar",
            "false",
            "--train.output_dir",
            args.output_dir,
            "--train.save_final_model",
            "false",
        ]
    )
    trainer = Trainer(cfg)
    acc, learner = trainer.accelerator, trainer.learner
    setup_peak = _rss_mb("VmHWM")
    if args.trim:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed setup memory (full copies before sharding) back
    _reset_peak_rss()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    experience = learner.experience.make(1)
    rollout_peak = _rss_mb("VmHWM")
    _reset_peak_rss()
    stats = learner.learn(experience)
    update_peak = _rss_mb("VmHWM")
    record = {
        "rank": acc.process_index,
        "policy_param_bytes": _held_bytes(learner.policy.model),
        "policy_full_bytes": sum(
            getattr(p, "ds_numel", p.numel()) * p.element_size() for p in learner.policy.model.parameters()
        ),
        "ref_param_bytes": _held_bytes(learner.reference.model),
        "optim_bytes": _optimizer_bytes(learner.update.optimizer, learner.policy.model),
        "setup_peak_rss_mb": round(setup_peak, 1),
        "rollout_peak_rss_mb": round(rollout_peak, 1),
        "update_peak_rss_mb": round(update_peak, 1),
        "step_peak_rss_mb": round(max(rollout_peak, update_peak), 1),
        "rss_after_step_mb": round(_rss_mb("VmRSS"), 1),
        "loss": stats["ppo/loss/total"],
    }
    if torch.cuda.is_available():
        record["step_peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / MiB, 1)
    records = [None] * acc.num_processes
    torch.distributed.all_gather_object(records, record)
    if acc.is_main_process:
        print("RESULT " + json.dumps(records), flush=True)
    trainer.close()
    # Measured and printed: skip interpreter teardown, which DeepSpeed's CPU communication threads
    # occasionally abort ("terminate called without an active exception"), as train.py does.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_mode(mode: str, args) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    if mode == "ddp" and not _cuda():
        env["ACCELERATE_USE_CPU"] = "true"  # DDP on CPU: gloo (DeepSpeed configs must not set it)
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(REPO / "accelerate_configs" / f"{mode}.yaml"),
            "--num_processes",
            "2",
            "--main_process_port",
            str(args.port),
            str(Path(__file__).resolve()),
            "--worker",
            "--shape",
            args.shape,
            *(["--trim"] if args.trim else []),
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--output-dir",
            out,
        ]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{mode}: {' '.join(cmd)} exited {proc.returncode}\n{proc.stderr[-4000:]}")
    ranks = json.loads(lines[-1][len("RESULT ") :])
    keys = [
        "policy_param_bytes",
        "ref_param_bytes",
        "optim_bytes",
        "setup_peak_rss_mb",
        "rollout_peak_rss_mb",
        "update_peak_rss_mb",
        "step_peak_rss_mb",
        "step_peak_gpu_mb",
    ]
    summary = {
        "mode": mode,
        "shape": args.shape,
        "processes": 2,
        "device": "cuda" if _cuda() else "cpu",
        "policy_full_bytes": ranks[0]["policy_full_bytes"],
    }
    summary.update({k: max(r[k] for r in ranks) for k in keys if k in ranks[0]})
    summary["ranks"] = ranks
    summary["command"] = f"python bench/zero_memory.py --shape {args.shape} --modes {mode}"
    return summary


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def markdown(rows: list[dict]) -> str:
    ddp = next((r for r in rows if r["mode"] == "ddp"), None)
    head = (
        "| mode | policy params / rank (MiB) | reference / rank (MiB) | optimizer / rank (MiB) "
        "| setup peak RSS (MiB) | step peak RSS (MiB) | step peak vs DDP |"
    )
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        ratio = f"{r['step_peak_rss_mb'] / ddp['step_peak_rss_mb']:.2f}x" if ddp else "-"
        lines.append(
            f"| {r['mode']} | {r['policy_param_bytes'] / MiB:.1f} | {r['ref_param_bytes'] / MiB:.1f} | "
            f"{r['optim_bytes'] / MiB:.1f} | {r['setup_peak_rss_mb']:.0f} | {r['step_peak_rss_mb']:.0f} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", choices=MODES, default=MODES)
    ap.add_argument("--shape", choices=list(common.SHAPES), default="124m")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--port", type=int, default=29533)
    ap.add_argument("--trim", action="store_true", help="glibc malloc_trim(0) after setup, before the step is measured")
    ap.add_argument("--out", help="append each JSON line to this file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--output-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    common.ensure_model_dir(args.shape, None, seed=common.SETTINGS["seed"])  # once, before the processes race
    rows = []
    for mode in args.modes:
        row = run_mode(mode, args)
        common.emit(row, args.out)
        rows.append(row)
    print(markdown(rows), flush=True)


if __name__ == "__main__":
    main()
