"""The loop patterns of legacy trl's example scripts, on a tiny causal LM; records what the test checks.

Usage: accelerate launch tests/scripts/legacy_patterns.py MODEL_DIR LOGS_DIR OUT.json
(``run`` is also called in process by the one-process test.)

Patterns: a custom optimizer and LR scheduler passed to PPOTrainer, a custom data collator,
LengthSampler response lengths, generate_ref_response=True, log_stats(columns_to_log=[...]).
"""

import json
import sys

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from ppo_dist import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer, set_seed
from ppo_dist.core import LengthSampler

PROMPTS = ["今天天气", "我觉得", "这本书", "周末我们", "春天来了"]


def collator(rows):
    return {"n_rows": len(rows), **{key: [row[key] for row in rows] for key in rows[0]}}


def run(model_dir: str, logs_dir: str) -> dict:
    set_seed(0)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1, steps=2, seed=0, log_with="tensorboard",
                       project_kwargs={"logging_dir": logs_dir})  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)  # legacy: once per step()
    data = Dataset.from_dict({"query": PROMPTS, "topic": list("abcde")})
    trainer = PPOTrainer(config, model, None, tokenizer, data, optimizer, collator, lr_scheduler=scheduler)
    initial = AutoModelForCausalLM.from_pretrained(model_dir)
    lengths = LengthSampler(2, 5)
    out = {"user_optimizer": trainer.optimizer.optimizer is optimizer, "lrs": [], "rows": [], "topics": [],
           "response_lengths": [], "ref_is_initial_model": []}  # fmt: skip
    for batch in trainer.dataloader:
        out["rows"].append(batch["n_rows"])
        out["topics"] += batch["topic"]
        queries = batch["input_ids"]
        responses = trainer.generate(queries, length_sampler=lengths, return_prompt=False)
        out["response_lengths"] += [len(r) for r in responses]
        _, ref_greedy = trainer.generate(queries, return_prompt=False, generate_ref_response=True, do_sample=False,
                                         max_new_tokens=3)  # fmt: skip
        for q, r in zip(queries, ref_greedy, strict=True):
            mask = torch.ones(1, len(q), dtype=torch.long)
            expected = initial.generate(q[None], attention_mask=mask, do_sample=False, max_new_tokens=3)
            out["ref_is_initial_model"].append(torch.equal(r, expected[0, len(q) : len(q) + len(r)]))
        batch["response"] = tokenizer.batch_decode(responses)
        batch["ref_response"] = tokenizer.batch_decode(ref_greedy)
        rewards = [torch.tensor(float(len(r))) for r in responses]
        stats = trainer.step(queries, responses, rewards)
        out["lrs"].append(stats["ppo/learning_rate"])
        trainer.log_stats(stats, batch, rewards, columns_to_log=["query", "response", "ref_response", "topic"])
    out["final_lr"] = optimizer.param_groups[0]["lr"]
    try:
        trainer.log_stats(stats, batch, rewards, columns_to_log=["query", "missing"])
    except ValueError as e:
        out["missing_column_error"] = str(e)
    params = trainer.accelerator.unwrap_model(trainer.model).parameters()
    checksum = torch.stack([p.detach().double().sum() for p in params]).sum().reshape(1)
    out["param_checksums"] = trainer.accelerator.gather(checksum).tolist()  # one per process
    out["is_main_process"] = trainer.accelerator.is_main_process
    trainer.end()
    return out


if __name__ == "__main__":
    result = run(sys.argv[1], sys.argv[2])
    if result["is_main_process"]:
        with open(sys.argv[3], "w") as f:
            json.dump(result, f)
