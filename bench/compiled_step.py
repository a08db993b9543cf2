"""When does a compiled training step pay? One micro-step (forward, logprob loss, backward, fused AdamW)
of a bench shape's GPT-2 body, eager against ``torch.compile`` (inductor), at the notebook's micro-batch.

    python bench/compiled_step.py --shape 3m                 # 2 samples x 45 tokens, as the notebook's update
    python bench/compiled_step.py --shape 150k --dynamic     # dynamic shapes, as train.compile compiles

Eager and compiled alternate (eager, compiled, eager, compiled) so drift shows; each prints the median
of --iters micro-steps after --warmup, and the compile's own wall time. One JSON line on stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(common.SHAPES), default="3m")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--length", type=int, default=45, help="query + response tokens")
    ap.add_argument("--response", type=int, default=32)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dynamic", action="store_true", help="torch.compile(dynamic=True)")
    args = ap.parse_args()
    common.set_threads(args.threads)
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**common.SHAPES[args.shape])).train()
    body, head = model.transformer, model.lm_head
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    B, L, R = args.batch, args.length, args.response
    ids = torch.randint(2, common.VOCAB_SIZE, (B, L))
    mask = torch.ones(B, L, dtype=torch.long)
    mask[0, : L // 8] = 0  # left padding on one row, as a padded micro-batch has
    positions = (mask.cumsum(1) - 1).clamp_min(0)

    def loss_fn(ids, mask, positions):
        hidden = body(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state
        logits = head(hidden[:, -R - 1 : -1]).float()
        logprobs = logits.gather(-1, ids[:, -R:, None]).squeeze(-1) - logits.logsumexp(-1)
        return -logprobs.mean()

    def micro_steps(fn) -> float:
        times = []
        for _ in range(args.warmup + args.iters):
            t0 = time.perf_counter()
            fn(ids, mask, positions).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
        return common.median(times[args.warmup :])

    t0 = time.perf_counter()
    compiled = torch.compile(loss_fn, dynamic=args.dynamic)
    compiled(ids, mask, positions).backward()
    opt.zero_grad(set_to_none=True)
    compile_s = time.perf_counter() - t0
    runs = {"eager": [], "compiled": []}
    for _ in range(2):
        runs["eager"].append(micro_steps(loss_fn))
        runs["compiled"].append(micro_steps(compiled))
    eager, comp = min(runs["eager"]), min(runs["compiled"])
    tokens = B * L
    flops = 6 * sum(p.numel() for p in model.parameters()) * tokens
    common.emit(
        {
            "system": "compiled_step" + ("-dynamic" if args.dynamic else ""),
            "shape": args.shape,
            "batch": B,
            "length": L,
            "eager_ms": round(eager * 1e3, 2),
            "compiled_ms": round(comp * 1e3, 2),
            "compiled_vs_eager": round(comp / eager, 3),
            "compile_s": round(compile_s, 1),
            "eager_runs_ms": [round(x * 1e3, 2) for x in runs["eager"]],
            "compiled_runs_ms": [round(x * 1e3, 2) for x in runs["compiled"]],
            "eager_gflops": round(flops / eager / 1e9, 1),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            **common.host_info(),
        }
    )


if __name__ == "__main__":
    main()
