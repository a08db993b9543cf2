"""Two legacy PPOTrainer steps of a tiny T5 on a fixed global batch of 4; each process takes its share.

Usage: accelerate launch tests/scripts/legacy_seq2seq_step.py MODEL_DIR OUT.json
(``run`` is also called in process by the test, for the one-process reference.)

Legacy sizes are per process, so W processes use batch_size 4/W and mini_batch_size 2/W: the same
global batch and mini-batches on any W. Responses are greedy, so they do not depend on W either.
Writes the statistics of both steps and every parameter, flattened (main process).
"""

import json
import os
import sys

import torch
from transformers import AutoTokenizer

from ppo_dist import AutoModelForSeq2SeqLMWithValueHead, PPOConfig, PPOTrainer, set_seed

QUERIES = [[5, 6, 7, 8], [9, 10], [11, 12, 13], [14]]
SCORES = [1.0, -0.5, 0.25, 0.0]


def run(model_dir: str) -> dict:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    set_seed(0)  # the value head's initialisation
    model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = PPOConfig(batch_size=4 // world, mini_batch_size=2 // world, ppo_epochs=2, learning_rate=1e-3, seed=0)
    trainer = PPOTrainer(config, model, None, tokenizer)
    rank, n = trainer.accelerator.process_index, config.batch_size
    queries = [torch.tensor(q) for q in QUERIES[rank * n : (rank + 1) * n]]
    scores = SCORES[rank * n : (rank + 1) * n]
    stats = []
    for _ in range(2):
        responses = trainer.generate(queries, return_prompt=False, do_sample=False, max_new_tokens=5)
        stats.append(trainer.step(queries, responses, scores))
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    params = {k: p.detach().double().flatten().tolist() for k, p in unwrapped.named_parameters()}
    out = {"stats": stats, "params": params, "is_encoder_decoder": config.is_encoder_decoder}
    out["is_main_process"] = trainer.accelerator.is_main_process
    trainer.end()
    return out


if __name__ == "__main__":
    result = run(sys.argv[1])
    if result["is_main_process"]:
        with open(sys.argv[2], "w") as f:
            json.dump(result, f)
