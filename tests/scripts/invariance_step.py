"""Two updates on a fixed global batch, for several config variants; each process takes its share.

Usage: accelerate launch tests/scripts/invariance_step.py OUT_DIR VARIANTS_JSON [--section.field value ...]
VARIANTS_JSON maps a name to extra arguments. For each variant, writes OUT_DIR/<name>.json (the
statistics of both steps and, per process, the micro-batches run per mini-batch) and OUT_DIR/<name>.pt
(the trainable parameters before and after). Variants share one process (and one launch) to save start-up time.
"""

import json
import sys
from pathlib import Path

import torch
from accelerate.utils import set_seed

from ppo_dist.config import parse_args, validate
from ppo_dist.models import load_tokenizer
from ppo_dist.rl.learner import build_learner
from ppo_dist.rl.rollout import Rollout, left_pad, right_pad
from ppo_dist.runtime import distributed


def fixed_global_batch(tokenizer, B: int):
    """Queries of 1-6 tokens, responses of 1-8 (odd lengths end with EOS), normal scores; seeded."""
    g = torch.Generator().manual_seed(1234)
    vocab = len(tokenizer)
    queries = [torch.randint(2, vocab, (int(n),), generator=g) for n in torch.randint(1, 7, (B,), generator=g)]
    responses = []
    for n in torch.randint(1, 9, (B,), generator=g):
        r = torch.randint(2, vocab, (int(n),), generator=g)
        if int(n) % 2:  # some responses end with EOS, some never do
            r[-1] = tokenizer.eos_token_id
        responses.append(r)
    scores = torch.randn(B, generator=g)
    return queries, responses, scores


def run_variant(acc, out: Path, name: str, argv: list[str]) -> None:
    cfg = parse_args(argv)
    plan = validate(cfg, acc.num_processes)
    set_seed(cfg.train.seed)
    tokenizer = load_tokenizer(cfg.model)
    learner = build_learner(cfg, acc, tokenizer, plan)
    trainable = [n for n, p in learner.policy.unwrapped.named_parameters() if p.requires_grad]
    initial = acc.get_state_dict(learner.policy.model)
    initial = {n: initial[n].detach().cpu().double().clone() for n in trainable}
    queries, responses, scores = fixed_global_batch(tokenizer, plan.batch_size)
    lo, hi = acc.process_index * plan.local_batch_size, (acc.process_index + 1) * plan.local_batch_size
    q, qm = left_pad(queries[lo:hi], tokenizer.pad_token_id)
    r, rm = right_pad(responses[lo:hi], tokenizer.pad_token_id)
    rollout = Rollout(q.to(acc.device), qm.to(acc.device), r.to(acc.device), rm.to(acc.device))
    stats, counts = [], []
    for _ in range(2):
        stats.append(learner.step(rollout, scores[lo:hi].to(acc.device)))
        counts.append(learner.update.micro_batch_counts)
    all_counts = distributed.gather_strings(acc, json.dumps(counts))
    state = acc.get_state_dict(learner.policy.model)
    if acc.is_main_process:
        record = {"stats": stats, "micro_batches": [json.loads(c) for c in all_counts]}
        (out / f"{name}.json").write_text(json.dumps(record))
        final = {n: state[n].detach().cpu().double() for n in trainable}
        torch.save({"initial": initial, "final": final}, out / f"{name}.pt")


def main():
    out, variants, common = Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3:]
    cfg = parse_args(common)
    acc = distributed.build_accelerator(cfg, validate(cfg, distributed.world_size_from_env()))
    for name, extra in variants.items():
        run_variant(acc, out, name, [*common, *extra])
    distributed.shutdown(acc)


if __name__ == "__main__":
    main()
