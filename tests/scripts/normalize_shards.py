"""Each process normalises its shard of fixed global batches the way the trainer does: gather the scores
and EOS flags with ``ppo_dist.runtime.distributed.gather_1d``, then ``RewardNormalizer`` on the gathered batch.

Usage: accelerate launch tests/scripts/normalize_shards.py OUT_DIR   (writes OUT_DIR/rank_<r>.json)

Printed per rank: the processed global scores of each step and the normaliser's running state.
"""

import json
import sys
from pathlib import Path

import torch

from ppo_dist.config import parse_args, validate
from ppo_dist.rewards import RewardNormalizer
from ppo_dist.runtime import distributed

# Two PPO steps of 8 scores; the halves differ in mean and spread, so per-shard statistics would differ.
BATCHES = [
    ([1.0, 2.0, 0.5, -1.0, 3.0, 2.5, 0.0, 4.0], [True, False, True, True, True, True, False, True]),
    ([10.0, 11.0, 9.5, 10.5, -2.0, 5.0, 0.0, 1.0], [True, True, False, True, True, True, True, False]),
]
SETTINGS = {"no_eos_penalty": -1.0, "scale": 2.0, "normalize": True, "clip": 1.5}


def main():
    out_dir = Path(sys.argv[1])
    cfg = parse_args(["--log.trackers", "[]", "--train.output_dir", str(out_dir)])
    acc = distributed.build_accelerator(cfg, validate(cfg, distributed.world_size_from_env()))
    local = len(BATCHES[0][0]) // acc.num_processes
    lo, hi = acc.process_index * local, (acc.process_index + 1) * local
    normalizer = RewardNormalizer(**SETTINGS)
    outputs = []
    for scores, finished in BATCHES:
        g_scores = distributed.gather_1d(acc, torch.tensor(scores[lo:hi], device=acc.device))
        g_finished = distributed.gather_1d(acc, torch.tensor(finished[lo:hi], device=acc.device))
        outputs.append(normalizer(g_scores, g_finished).tolist())
    result = {"world_size": acc.num_processes, "outputs": outputs, "state": normalizer.state_dict()}
    (out_dir / f"rank_{acc.process_index}.json").write_text(json.dumps(result))
    distributed.shutdown(acc)


if __name__ == "__main__":
    main()
