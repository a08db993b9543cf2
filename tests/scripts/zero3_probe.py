"""Launched under accelerate_configs/zero3.yaml: measures ZeRO-3 sharding and generation gathers.

Prints one JSON line (main process) with the policy's full parameter count, the count this rank
holds, and the number of all-gather collectives issued during one rollout with
``rollout.gather_for_generation`` on and off, for 4 and 16 generated tokens. Collectives are counted
by wrapping the real ``torch.distributed`` functions (they still run).
"""

import dataclasses
import functools
import json
import os
import sys

import torch.distributed as dist

from ppo_dist.config import parse_args
from ppo_dist.rl.trainer import Trainer

COUNT = {"n": 0}
for name in ("all_gather_into_tensor", "all_gather", "_all_gather_base", "all_gather_coalesced"):
    if hasattr(dist, name):
        original = getattr(dist, name)

        @functools.wraps(original)
        def counted(*args, _original=original, **kwargs):
            COUNT["n"] += 1
            return _original(*args, **kwargs)

        setattr(dist, name, counted)


def gathers_during_rollout(trainer: Trainer, tokens: int) -> int:
    """Collectives while the engine generates ``tokens`` tokens for every prompt of a step."""
    experience, acc = trainer.learner.experience, trainer.accelerator
    batch = experience.prompts.local_batch(0, acc.process_index, acc.num_processes)
    # min_new_tokens: every rollout really generates this many tokens
    sampling = dataclasses.replace(experience.sampling, max_new_tokens=tokens, min_new_tokens=tokens)
    dist.barrier()
    before = COUNT["n"]
    experience.engine.generate(batch.input_ids, sampling)
    return COUNT["n"] - before


def main() -> None:
    cfg = parse_args(sys.argv[1:])
    trainer = Trainer(cfg)
    model = trainer.learner.policy.model
    full = sum(p.ds_numel for p in model.parameters())
    held = sum(p.ds_tensor.numel() for p in model.parameters())
    ref_full = sum(p.ds_numel for p in trainer.learner.reference.model.parameters())
    ref_held = sum(p.ds_tensor.numel() for p in trainer.learner.reference.model.parameters())
    counts = {}
    for gather in (True, False):
        trainer.learner.experience.engine.gather = gather
        for tokens in (4, 16):
            counts[f"{'on' if gather else 'off'}_{tokens}"] = gathers_during_rollout(trainer, tokens)
    if trainer.accelerator.is_main_process:
        print(
            json.dumps(
                {
                    "full": full,
                    "held": held,
                    "ref_full": ref_full,
                    "ref_held": ref_held,
                    "gathers": counts,
                    "n_params": len(list(model.parameters())),
                }
            ),
            flush=True,
        )
    trainer.close()
    sys.stdout.flush()
    # The measurement is printed; skip interpreter teardown, where DeepSpeed's CPU shared-memory
    # comm threads occasionally abort a process that never trained (not seen with train.py).
    os._exit(0)


if __name__ == "__main__":
    main()
