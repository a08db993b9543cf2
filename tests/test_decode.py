"""rollout.decode: ppo_dist's KV-cache loop samples exactly what transformers' generate samples."""

import copy

import pytest
import torch
from transformers import GenerationConfig

from ppo_dist.rl.engines import Sampling
from ppo_dist.rl.engines.hf import HFEngine, generate, sample_loop
from ppo_dist.rl.rollout import left_pad

from .learners import tiny_learner

PROMPTS = ["你好", "今天天气很好，我们去公园散步吧", "a", "学习让我开心"]

SETTINGS = {
    "greedy": dict(do_sample=False),
    "sampled": dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0),
    "warped": dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.9),
    "min_new_tokens": dict(do_sample=True, temperature=1.3, top_k=0, top_p=1.0, min_new_tokens=6),
    "unset_warpers": dict(do_sample=True),  # generate's own defaults (top_k 50) apply to both
}


@pytest.fixture(scope="module")
def lora_and_plain():
    plain, tok = tiny_learner([])
    lora, _ = tiny_learner(["--model.lora.r", "4"])
    return {"value-head policy": plain, "LoRA policy": lora}, tok


def _prompts(tok, repeat=2):
    ids = [torch.tensor(tok(p)["input_ids"]) for p in PROMPTS for _ in range(repeat)]
    return ids, *left_pad(ids, tok.pad_token_id)


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("which", ["value-head policy", "LoRA policy"])
def test_loop_samples_the_tokens_of_generate(lora_and_plain, setting, which):
    learners, tok = lora_and_plain
    model = learners[which].policy.unwrapped.eval()
    _, q, qm = _prompts(tok)
    gen = GenerationConfig(max_new_tokens=20, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    gen.update(**SETTINGS[setting])
    torch.manual_seed(7)
    expected = model.generate(input_ids=q, attention_mask=qm, generation_config=gen)[:, q.shape[1] :]
    torch.manual_seed(7)
    got = sample_loop(model, q, qm, gen)
    assert got.shape == expected.shape
    assert torch.equal(got, expected)
    if setting == "min_new_tokens":
        assert not (got[:, :6] == tok.eos_token_id).any()


def test_loop_stops_when_every_row_has_ended(lora_and_plain):
    """Rows end at different steps: each is padded after its EOS, and the loop stops at the step
    where the last row ends, with generate's tokens throughout."""
    learners, tok = lora_and_plain
    model = copy.deepcopy(learners["value-head policy"].policy.unwrapped).eval()
    eos = tok.eos_token_id
    with torch.no_grad():  # push the last hidden state towards EOS: responses of 1-40 tokens
        w = model.hf_model.get_output_embeddings().weight
        model.hf_model.transformer.ln_f.bias += 30 * w[eos] / w[eos].norm()
    ids, q, qm = _prompts(tok)
    gen = GenerationConfig(max_new_tokens=40, do_sample=True, top_k=0, top_p=1.0, temperature=1.0)
    gen.update(eos_token_id=eos, pad_token_id=tok.pad_token_id)
    widths = []
    for seed in range(4):
        torch.manual_seed(seed)
        expected = model.generate(input_ids=q, attention_mask=qm, generation_config=gen)[:, q.shape[1] :]
        torch.manual_seed(seed)
        got = sample_loop(model, q, qm, gen)
        assert torch.equal(got, expected)
        ends = [int((row == eos).nonzero()[0]) for row in got]  # every row ends within 40 tokens here
        assert got.shape[1] == max(ends) + 1 and len(set(ends)) > 1
        for row, end in zip(got, ends, strict=True):
            assert (row[end + 1 :] == tok.pad_token_id).all()
        widths.append(got.shape[1])
    assert max(widths) < 40


def test_engine_rollouts_are_the_same_with_either_loop(lora_and_plain):
    learners, tok = lora_and_plain
    learner = learners["value-head policy"]
    acc, policy = learner.policy.accelerator, learner.policy
    ids, _, _ = _prompts(tok)
    sampling = Sampling.from_config(learner.experience.cfg.rollout, tok).with_seed(11)
    loop = HFEngine(acc, policy, tok, decode="loop").generate(ids, sampling)
    plain = HFEngine(acc, policy, tok, decode="generate").generate(ids, sampling)
    for field in ("queries", "query_mask", "responses", "response_mask"):
        assert torch.equal(getattr(loop, field), getattr(plain, field)), field


def test_loop_refuses_what_it_does_not_do(lora_and_plain):
    learners, tok = lora_and_plain
    model = learners["value-head policy"].policy.unwrapped
    ids, _, _ = _prompts(tok, repeat=1)
    gen = GenerationConfig(max_new_tokens=4, do_sample=False, eos_token_id=tok.eos_token_id)
    with pytest.raises(ValueError, match="rollout.decode=loop cannot take generate arguments"):
        generate(model, ids, tok, gen, decode="loop", logits_processor=[])
    with pytest.raises(ValueError, match="rollout.decode='beam'"):
        generate(model, ids, tok, gen, decode="beam")


def test_compiled_decode_gives_the_tokens_of_generate(lora_and_plain):
    """rollout.decode=compiled: static cache, compiled decode step; prompts of different lengths in one
    cache bucket reuse the step. Greedy tokens are generate's; so are sampled ones here (the tiny model
    barely attends, so greedy alone would miss a cache slot left out of the mask; sampling does not)."""
    learners, tok = lora_and_plain
    model = learners["value-head policy"].policy.unwrapped.eval()
    for setting in ("greedy", "sampled"):
        gen = GenerationConfig(max_new_tokens=20, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        gen.update(**SETTINGS[setting])
        for prompts in (PROMPTS * 2, PROMPTS[::-1][:3]):
            ids = [torch.tensor(tok(p)["input_ids"]) for p in prompts]
            q, qm = left_pad(ids, tok.pad_token_id)
            torch.manual_seed(5)
            expected = model.generate(input_ids=q, attention_mask=qm, generation_config=gen)[:, q.shape[1] :]
            torch.manual_seed(5)
            assert torch.equal(sample_loop(model, q, qm, gen, compiled=True), expected), setting
            torch.manual_seed(5)
            rollout = generate(model, ids, tok, gen, decode="compiled")
            assert torch.equal(rollout.responses[:, : expected.shape[1]], expected * rollout.response_mask)
