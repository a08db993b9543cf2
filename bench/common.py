"""Settings and helpers shared by every benchmark (legacy trl, current TRL, and ppo_dist).

Depends only on the standard library, torch and transformers (4.4x and 5.x), plus the embedded
tokenizer file; it must never import ppo_dist or trl, because it is imported from inside the
reference virtual environments as well as from the project.

    python bench/common.py --shape 150k --out bench/out/models/150k   # build one model dir
    python bench/common.py --params                                     # print every shape's size
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
TOKENIZER_FILE = REPO_ROOT / "ppo_dist" / "assets" / "tokenizer.json"
OUT_DIR = BENCH_DIR / "out"
MODELS_DIR = OUT_DIR / "models"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
VOCAB_SIZE = 512  # the embedded tokenizer's vocabulary (eos = 0, pad = 1)

# ---------------------------------------------------------------------------------------------
# Model shapes: GPT2Config kwargs. Sizes are total parameters at vocab 512 with tied embeddings
# (the value head adds n_embd + 1): 150k -> 149,248; 3m -> 3,356,160; 124m -> 86,235,648
# (the GPT-2 124M body; its 124M includes a 50257-token embedding we do not have).
# ---------------------------------------------------------------------------------------------
_COMMON = dict(vocab_size=VOCAB_SIZE, bos_token_id=0, eos_token_id=0, pad_token_id=1)
SHAPES: dict[str, dict] = {
    "150k": dict(_COMMON, n_layer=2, n_embd=64, n_head=4, n_positions=256),
    "3m": dict(_COMMON, n_layer=4, n_embd=256, n_head=4, n_positions=256),
    "124m": dict(_COMMON, n_layer=12, n_embd=768, n_head=12, n_positions=1024),
}
# The 3m body with dropout 0, as modern LLMs ship (the GRPO race, bench/grpo_race.py).
SHAPES["3m-nodrop"] = dict(SHAPES["3m"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)

# ---------------------------------------------------------------------------------------------
# Run settings (the legacy notebook's, made explicit). Every bench reads them from here.
# ---------------------------------------------------------------------------------------------
SETTINGS = dict(
    batch_size=8,
    mini_batch_size=2,
    ppo_epochs=4,
    max_new_tokens=32,
    do_sample=True,
    top_k=0,
    top_p=1.0,
    temperature=1.0,
    min_length=-1,
    seed=42,
    learning_rate=1.41e-5,
    init_kl_coef=0.2,
    adap_kl_ctrl=True,
    cliprange=0.2,
    cliprange_value=0.2,
    vf_coef=0.1,
)

PROMPTS: list[str] = [
    "今天天气",
    "我喜欢",
    "学习编程",
    "这部电影",
    "人工智能",
    "我的朋友",
    "周末的时候",
    "春天来了",
    "读书让我",
    "音乐让人",
    "写一句关于春天的话",
    "说说你今天的心情",
    "介绍一下你的家乡",
    "给朋友写一段祝福",
    "谈谈学习的方法",
    "描述一下你最喜欢的食物",
]

POSITIVE_WORDS = ("好", "棒", "喜欢", "开心", "快乐", "有趣", "学习", "成长")


def prompt_batch(step: int, batch_size: int = 8) -> list[str]:
    """Prompts of step ``step``: consecutive slices of ``PROMPTS``, cycling (step 0 -> 0..7, 1 -> 8..15)."""
    start = step * batch_size
    return [PROMPTS[(start + i) % len(PROMPTS)] for i in range(batch_size)]


# ---------------------------------------------------------------------------------------------
# Reward: same semantics as ppo_dist.rewards.chinese_rule (copied, not imported).
# ---------------------------------------------------------------------------------------------
def _repeats_too_much(text: str, n: int = 2) -> bool:
    chars = "".join(text.split())
    grams = [chars[i : i + n] for i in range(len(chars) - n + 1)]
    return len(grams) >= 4 and len(set(grams)) < 0.5 * len(grams)


def rule_reward(texts: Iterable[str]) -> list[float]:
    """0.1 base; +0.5 when 10 <= len(text.strip()) <= 50; +0.3 per positive word present;
    -0.2 when the whitespace-stripped text has >= 4 character bigrams, fewer than half distinct."""
    out = []
    for text in texts:
        text = text.strip()
        r = 0.1
        if 10 <= len(text) <= 50:
            r += 0.5
        r += 0.3 * sum(word in text for word in POSITIVE_WORDS)
        if _repeats_too_much(text):
            r -= 0.2
        out.append(r)
    return out


# ---------------------------------------------------------------------------------------------
# Models and tokenizer
# ---------------------------------------------------------------------------------------------
def load_tokenizer(path: str | os.PathLike | None = None):
    """The embedded tokenizer, built explicitly (never through AutoTokenizer, whose saved
    config differs between transformers 4.x and 5.x). ``path``: a tokenizer.json or a dir with one."""
    from transformers import PreTrainedTokenizerFast

    file = Path(path) if path is not None else TOKENIZER_FILE
    if file.is_dir():
        file = file / "tokenizer.json"
    return PreTrainedTokenizerFast(
        tokenizer_file=str(file),
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        # transformers 4.x's PreTrainedTokenizerFast would also return token_type_ids (all 0), and
        # GPT-2 adds wte(token_type_ids) to every position when they are passed: different logits.
        model_input_names=["input_ids", "attention_mask"],
    )


def count_params(shape: str) -> int:
    """Total parameters of ``shape`` (tied LM head counted once), computed from the config alone."""
    c = SHAPES[shape]
    d, layers, v, p = c["n_embd"], c["n_layer"], c["vocab_size"], c["n_positions"]
    per_layer = 12 * d * d + 13 * d  # attn (4 d^2 + 4 d) + mlp (8 d^2 + 5 d) + 2 layer norms (4 d)
    return v * d + p * d + layers * per_layer + 2 * d


def build_model_dir(shape: str, out_dir: str | os.PathLike, seed: int = 42) -> Path:
    """Write a randomly initialised GPT-2 of ``shape`` (seeded) plus the tokenizer into ``out_dir``.

    safetensors weights + config.json that load with ``from_pretrained`` in transformers 4.46 and 5.x.
    Idempotent: an existing dir with a matching ``bench_shape.json`` is left as it is.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    out = Path(out_dir)
    stamp = {"shape": shape, "seed": seed, "config": SHAPES[shape], "format": 3}
    stamp_file = out / "bench_shape.json"
    if stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp and (out / "model.safetensors").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**SHAPES[shape]))
    n = sum(p.numel() for p in model.parameters())
    assert n == count_params(shape), f"{shape}: built {n} params, count_params says {count_params(shape)}"
    model.generation_config.pad_token_id = SHAPES[shape]["pad_token_id"]
    model.save_pretrained(out, safe_serialization=True)
    load_tokenizer().save_pretrained(out)
    # transformers 5.x writes tokenizer_class "TokenizersBackend", which 4.x's AutoTokenizer does not
    # know; PreTrainedTokenizerFast is understood by both.
    tok_cfg_file = out / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_file.read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_cfg["model_input_names"] = ["input_ids", "attention_mask"]
    tok_cfg_file.write_text(json.dumps(tok_cfg, indent=2))
    stamp_file.write_text(json.dumps(stamp))
    return out


def ensure_model_dir(shape: str, model_dir: str | os.PathLike | None = None, seed: int = 42) -> Path:
    return build_model_dir(shape, model_dir or MODELS_DIR / shape, seed=seed)


# ---------------------------------------------------------------------------------------------
# Measurement helpers
# ---------------------------------------------------------------------------------------------
def set_threads(n: int) -> None:
    """Pin intra-op threads (and OMP/MKL for any child) to ``n``; call before heavy torch work."""
    import torch

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    torch.set_num_threads(n)


class Timer:
    """``with Timer() as t: ...`` then ``t.s`` (perf_counter seconds)."""

    def __enter__(self):
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self._t0


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def target_summary(target: float, reached: tuple[int, float] | None, steps_run: int) -> dict:
    """The time-to-target fields of a summary line; ``reached`` is (step, seconds) or None."""
    return {
        "target": target,
        "reached_target": reached is not None,
        "steps_to_target": reached[0] if reached else None,
        "time_to_target_s": round(reached[1], 2) if reached else None,
        "steps_run": steps_run,
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def host_info() -> dict:
    return {"host_cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()}


def emit(record: dict, path: str | os.PathLike | None = None) -> None:
    """Print ``record`` as one JSON line on stdout (and append it to ``path`` when given)."""
    line = json.dumps(record, ensure_ascii=False, sort_keys=False)
    print(line, flush=True)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v).replace("|", "\\|")


def append_markdown_row(path: str | os.PathLike, table: str, row: dict, columns: Sequence[str] | None = None) -> None:
    """Append ``row`` to the Markdown table under the heading ``## {table}`` in ``path``.

    The file and the section (heading + header row from ``columns`` or the row's keys) are created
    when missing. Rows are placed after the table's last row, so other sections stay untouched.
    Values missing from ``row`` are written as empty cells; keys not in the header raise.
    """
    p = Path(path)
    lines = p.read_text(encoding="utf-8").splitlines() if p.exists() else []
    heading = f"## {table}"
    if heading not in lines:
        cols = list(columns or row)
        if lines and lines[-1].strip():
            lines.append("")
        lines += [heading, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        insert_at = len(lines)
    else:
        h = lines.index(heading)
        i = h + 1
        while i < len(lines) and not lines[i].startswith("|"):
            if lines[i].startswith("#"):
                raise ValueError(f"{p}: section {heading!r} has no table")
            i += 1
        cols = [c.strip() for c in lines[i].strip().strip("|").split("|")]
        i += 2  # header + separator
        while i < len(lines) and lines[i].startswith("|"):
            i += 1
        insert_at = i
    extra = set(row) - set(cols)
    if extra:
        raise ValueError(f"{p}: columns {sorted(extra)} not in table {table!r} header {cols}")
    lines.insert(insert_at, "| " + " | ".join(_fmt(row.get(c, "")) for c in cols) + " |")
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(SHAPES))
    ap.add_argument("--out", help="model dir to write (default bench/out/models/<shape>)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--params", action="store_true", help="print the parameter count of every shape")
    args = ap.parse_args()
    if args.params:
        for s in SHAPES:
            print(s, count_params(s))
    if args.shape:
        print(build_model_dir(args.shape, args.out or MODELS_DIR / args.shape, seed=args.seed))


if __name__ == "__main__":
    main()
