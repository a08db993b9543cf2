"""Create the two reference virtual environments used by the benchmarks (issue 9).

    python bench/venvs.py                 # both venvs (idempotent: skipped when the marker matches)
    python bench/venvs.py legacy          # only bench/.venvs/legacy  (trl 0.11.4 PPOTrainer)
    python bench/venvs.py trl --force     # rebuild bench/.venvs/trl  (current TRL, GRPOTrainer)
    python bench/venvs.py --print-python legacy   # path of the venv's interpreter

torch is installed FIRST and pinned (torch==2.13.0 resolves to the local CPU wheel; an unpinned
torch would pull a multi-GB CUDA build), then the rest with ``torch==2.13.0`` repeated so the
resolver can never replace it. trl is never installed into the project's own environment.
A venv is considered ready when ``<venv>/.bench-ready`` holds exactly the spec below.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import venv
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
VENV_ROOT = BENCH_DIR / ".venvs"
TORCH = "torch==2.13.0"

# name -> packages installed after torch (torch pin repeated so pip keeps the CPU wheel).
SPECS: dict[str, list[str]] = {
    # trl 0.11.4 is the last release with the classic PPOTrainer(config, model, ref_model, tokenizer)
    # + .generate/.step API. transformers 4.46 / accelerate 1.0 are the releases it was tested against;
    # huggingface-hub < 1.0 is what transformers 4.46 accepts.
    "legacy": [
        "trl==0.11.4",
        "transformers==4.46.3",
        "accelerate==1.0.1",
        "huggingface-hub<1.0",
        "datasets<4",
        "rich",  # imported by trl 0.11.4 (trl.trainer.utils) but not declared as a dependency
    ],
    # Current TRL with whatever transformers/accelerate it resolves to (torch stays 2.13.0).
    "trl": ["trl==1.16.0"],
}


SMOKE: dict[str, str] = {
    "legacy": "from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer; import trl; print('trl', "
    "trl.__version__)",
    "trl": "from trl import GRPOConfig, GRPOTrainer; import trl; print('trl', trl.__version__)",
}


def venv_python(name: str) -> Path:
    return VENV_ROOT / name / "bin" / "python"


def _marker(name: str) -> Path:
    return VENV_ROOT / name / ".bench-ready"


def _spec_text(name: str) -> str:
    return json.dumps({"torch": TORCH, "packages": SPECS[name]}, sort_keys=True)


def is_ready(name: str) -> bool:
    m = _marker(name)
    return m.exists() and m.read_text() == _spec_text(name) and venv_python(name).exists()


def _run(cmd: list[str]) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True)


def ensure(name: str, force: bool = False) -> Path:
    """Create (or reuse) ``bench/.venvs/<name>``; returns its python."""
    if name not in SPECS:
        raise SystemExit(f"unknown venv {name!r}; known: {', '.join(SPECS)}")
    if is_ready(name) and not force:
        print(f"[venvs] {name}: ready ({VENV_ROOT / name})", flush=True)
        return venv_python(name)
    root = VENV_ROOT / name
    print(f"[venvs] {name}: creating {root}", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    py = venv_python(name)
    pip = [py, "-m", "pip", "install", "--no-input", "--progress-bar", "off"]
    _run(pip + [TORCH])  # 1. torch first: the local CPU wheel
    _run(pip + [TORCH] + SPECS[name])  # 2. the rest, torch pinned again
    _run([py, "-c", SMOKE[name]])  # import what the bench uses, so a missing dependency fails here
    _marker(name).write_text(_spec_text(name))
    return py


def versions(name: str) -> dict[str, str]:
    """Installed versions of the packages that matter, read from inside the venv."""
    code = (
        "import json, importlib.metadata as m\n"
        "out = {}\n"
        "for p in "
        "['torch','transformers','trl','accelerate','tokenizers','numpy','datasets','safetensors','huggingface-hub']:\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    return json.loads(
        subprocess.run([str(venv_python(name)), "-c", code], check=True, capture_output=True, text=True).stdout
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", default=list(SPECS), help=f"venvs to ensure (default: {' '.join(SPECS)})")
    ap.add_argument("--force", action="store_true", help="recreate even when the marker says ready")
    ap.add_argument("--print-python", action="store_true", help="only print each venv's python path")
    args = ap.parse_args()
    for name in args.names:
        if args.print_python:
            print(venv_python(name))
            continue
        ensure(name, force=args.force)
        print(f"[venvs] {name}: {json.dumps(versions(name))}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
