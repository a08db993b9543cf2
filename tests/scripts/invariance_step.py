"""One PPO update on a fixed global batch; each process takes its share. Writes stats + params as JSON.

Usage: accelerate launch tests/scripts/invariance_step.py OUT.json [--section.field value ...]
"""

import json
import sys

import torch
from accelerate.utils import set_seed

from ppo_dist import distributed
from ppo_dist.config import parse_args, validate
from ppo_dist.models import build_models, load_tokenizer
from ppo_dist.rollout import Rollout, left_pad, right_pad
from ppo_dist.trainer import PPOEngine, build_optimizer


def fixed_global_batch(tokenizer, B: int):
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


def main():
    out_path, argv = sys.argv[1], sys.argv[2:]
    cfg = parse_args(argv)
    plan = validate(cfg, distributed.world_size_from_env())
    acc = distributed.build_accelerator(cfg, plan)
    set_seed(cfg.train.seed)
    tokenizer = load_tokenizer(cfg.model)
    policy, ref = build_models(cfg.model, tokenizer)
    optimizer, scheduler = build_optimizer(cfg, policy, plan)
    model, optimizer, scheduler = acc.prepare(policy, optimizer, scheduler)
    engine = PPOEngine(cfg, acc, model, ref.to(acc.device), optimizer, scheduler, tokenizer, plan)

    queries, responses, scores = fixed_global_batch(tokenizer, plan.batch_size)
    lo, hi = acc.process_index * plan.local_batch_size, (acc.process_index + 1) * plan.local_batch_size
    q, qm = left_pad(queries[lo:hi], tokenizer.pad_token_id)
    r, rm = right_pad(responses[lo:hi], tokenizer.pad_token_id)
    stats = [engine.step(Rollout(q, qm, r, rm), scores[lo:hi]) for _ in range(2)]
    unwrapped = acc.unwrap_model(model)
    params = {n: p.detach().double().sum().item() for n, p in unwrapped.named_parameters()}
    if acc.is_main_process:
        with open(out_path, "w") as f:
            json.dump({"stats": stats, "params": params}, f)
    distributed.shutdown(acc)


if __name__ == "__main__":
    main()
