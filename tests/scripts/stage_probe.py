"""Run an sft/rm/dpo stage in process, then score fixed texts with the in-memory model (tests only).

Usage: accelerate launch tests/scripts/stage_probe.py OUT.json [train.py arguments...]

After ``train()`` (which saves ``final_model/``) every process runs the same forward through the
trained model as the trainer holds it (under ZeRO-3 the DeepSpeed engine, which gathers each layer's
shards as it goes); the main process writes the outputs to OUT.json, for the test to compare with the
saved model's. rm: the reward head's scores; sft/dpo: the logprob of each text's tokens.
"""

import json
import os
import sys

import torch

from ppo_dist.config import parse_args
from ppo_dist.stages import runner_class

TEXTS = ["今天天气很好，我们去公园散步。", "这部电影让我很开心", "学习编程"]


def probe_outputs(model, tokenizer, stage: str) -> list:
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    if stage == "rm":
        return out.logits.float().squeeze(-1).tolist()
    logprobs = torch.log_softmax(out.logits.float()[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    return (logprobs * batch["attention_mask"][:, 1:]).sum(1).tolist()


if __name__ == "__main__":
    out_path, argv = sys.argv[1], sys.argv[2:]
    cfg = parse_args(argv)
    runner = runner_class(cfg.stage)(cfg)
    runner.train()
    model = runner.trainer.model_wrapped
    model.eval()
    outputs = probe_outputs(model, runner.tokenizer, cfg.stage)
    if runner.trainer.accelerator.is_main_process:
        with open(out_path, "w") as f:
            json.dump(outputs, f)
    runner.close()
    sys.stdout.flush()
    os._exit(0)  # as train.py after DeepSpeed: its CPU communication threads may abort the interpreter's teardown
