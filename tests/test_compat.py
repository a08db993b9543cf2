"""The legacy trl PPO API on ppo_dist: the notebook's workflow end to end, and its edge cases."""

import json
import math
import statistics

import numpy as np
import pytest
import torch
from datasets import Dataset

from ppo_dist import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
from ppo_dist.config import ConfigError, ModelConfig
from ppo_dist.models import build_tiny_gpt2, load_tokenizer
from tests.launch import launch

# Long enough for the tiny model to learn the rule reward (the notebook's lr 1.41e-5 needs far more steps).
LEARN_ARGS = ["--learning_rate", "1e-3", "--init_kl_coef", "0.02"]


def _check_notebook_run(out, steps: int, learns: bool = True):
    history = json.loads((out / "history.json").read_text())
    rewards = history["reward"]
    assert len(rewards) == steps  # config.steps honoured by the dataloader
    assert all(math.isfinite(x) for x in history["policy_loss"])
    if learns:
        first, last = statistics.mean(rewards[:10]), statistics.mean(rewards[-10:])
        assert last > first + 0.2, (first, last)
    assert (out / "curves.png").stat().st_size > 10_000
    reloaded = AutoModelForCausalLMWithValueHead.from_pretrained(out / "final_model")
    base = AutoModelForCausalLMWithValueHead.from_pretrained(out / "base_model")  # what the run started from
    trained, start = dict(reloaded.named_parameters()), dict(base.named_parameters())
    assert trained.keys() == start.keys() and (out / "final_model" / "value_head.pt").is_file()
    assert any(not torch.equal(trained[k], start[k]) for k in trained if not k.startswith("v_head"))
    assert all(torch.isfinite(p).all() for p in trained.values())
    assert (
        len(list(out.glob("*/events.out.tfevents.*"))) == 1
    )  # one writer, on the main process (hparams go to a subdir)


def test_notebook_workflow_one_process(tmp_path):
    proc = launch(["--out", str(tmp_path), "--steps", "60", *LEARN_ARGS], script="examples/notebook.py")
    _check_notebook_run(tmp_path, 60)
    assert "我今天很 ->" in proc.stdout and "学习让我 ->" in proc.stdout  # generation on new prompts


@pytest.mark.distributed
def test_notebook_workflow_two_processes(tmp_path):
    # The same workflow on 2 processes, for fewer steps: the one-process run above shows it learns.
    proc = launch(
        ["--out", str(tmp_path), "--steps", "16", *LEARN_ARGS], num_processes=2, script="examples/notebook.py"
    )
    _check_notebook_run(tmp_path, 16, learns=False)
    assert proc.stdout.count("我今天很 ->") == 1  # printed by the main process only


# ---------------------------------------------------------------- edge cases, in process


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    tokenizer = load_tokenizer(ModelConfig())
    build_tiny_gpt2(ModelConfig(tiny_n_layer=1, tiny_n_embd=32, tiny_n_head=2), tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def trainer(saved_model, tmp_path):
    from transformers import AutoTokenizer

    config = PPOConfig(
        model_name=str(saved_model),
        batch_size=4,
        mini_batch_size=2,
        ppo_epochs=1,
        steps=5,
        seed=1,
        project_kwargs={"logging_dir": str(tmp_path)},
    )
    model = AutoModelForCausalLMWithValueHead.from_pretrained(config.model_name)
    tok = AutoTokenizer.from_pretrained(config.model_name)
    data = Dataset.from_dict({"query": ["今天天气", "我觉得", "这本书", "周末我们", "春天来了", "老师说"]})
    t = PPOTrainer(config, model, None, tok, dataset=data)
    yield t
    t.end()


def _batch(trainer):
    batch = next(iter(trainer.dataloader))
    responses = trainer.generate(batch["input_ids"], return_prompt=False, max_new_tokens=6)
    return batch, responses


def test_dataloader_tokenizes_text_column_and_yields_steps_batches(trainer):
    batches = list(trainer.dataloader)
    assert len(batches) == 5  # steps=5 over 6 prompts with batch 4: cycles instead of stopping after 1
    assert all(len(b["input_ids"]) == 4 and len(b["query"]) == 4 for b in batches)
    assert all(isinstance(t, torch.Tensor) and t.dim() == 1 for t in batches[0]["input_ids"])
    assert trainer.tokenizer.decode(batches[0]["input_ids"][0]) == batches[0]["query"][0]


def test_dataloader_keeps_long_prompts_and_tokenized_datasets_need_no_text_column(trainer):
    long_prompt = "今天天气很好" * 40  # 240 characters: legacy never cut a prompt
    batch = next(iter(trainer.prepare_dataloader(Dataset.from_dict({"query": [long_prompt] * 4}))))
    assert trainer.tokenizer.decode(batch["input_ids"][0]) == long_prompt
    ids = [trainer.tokenizer(t)["input_ids"] for t in ["今天", "我觉得", "这本书", "春天"]]
    data = Dataset.from_dict({"input_ids": ids, "title": ["a", "b", "c", "d"], "body": ["e", "f", "g", "h"]})
    batch = next(iter(trainer.prepare_dataloader(data)))
    assert set(batch["query"]) <= {trainer.tokenizer.decode(i) for i in ids} and set(batch["title"]) <= set("abcd")


def test_dataloader_refuses_empty_queries_naming_the_first(trainer):
    with pytest.raises(ConfigError, match=r"2 of 3 prompts are empty or whitespace only \(first: prompt 1\)"):
        trainer.prepare_dataloader(Dataset.from_dict({"query": ["今天天气", " ", ""]}))
    with pytest.raises(ConfigError, match=r"1 of 2 queries have no input_ids \(first: row 0\)"):
        trainer.prepare_dataloader(Dataset.from_dict({"query": ["", "我觉得"], "input_ids": [[], [5, 6]]}))


def test_generate_cuts_at_eos_and_handles_single_tensor(trainer):
    batch, responses = _batch(trainer)
    eos = trainer.tokenizer.eos_token_id
    for r in responses:
        assert 1 <= len(r) <= 6
        assert (r[:-1] != eos).all()  # nothing after the first EOS
    with_prompt = trainer.generate(batch["input_ids"][:2], return_prompt=True, max_new_tokens=3)
    assert torch.equal(with_prompt[0][: len(batch["input_ids"][0])], batch["input_ids"][0])
    single = trainer.generate(batch["input_ids"][0], return_prompt=False, max_new_tokens=3)
    assert single.dim() == 2 and single.shape[0] == 1
    with pytest.raises(ValueError, match=r"1-D tensor \(seq_len\) or a list of them.*shape \(2, 3\)"):
        trainer.generate(torch.ones(2, 3, dtype=torch.long), max_new_tokens=3)


def test_length_sampler_is_drawn_per_chunk_and_again_for_the_reference(trainer):
    # legacy _generate_batched draws max_new_tokens for every batch_size prompts, and again for the reference.
    draws = iter([2, 5, 3, 4])
    queries = next(iter(trainer.dataloader))["input_ids"]  # 4 prompts, 2 per chunk
    out, ref = trainer.generate(queries, length_sampler=lambda: next(draws), batch_size=2, return_prompt=False,
                                generate_ref_response=True, min_new_tokens=6)  # fmt: skip
    assert [len(r) for r in out] == [2, 2, 5, 5] and [len(r) for r in ref] == [3, 3, 4, 4]


def test_step_returns_legacy_stats_and_reference_stays_frozen(trainer):
    ref_before = [p.detach().clone() for p in trainer.ref_model.parameters()]
    policy_before = [p.detach().clone() for p in trainer.model.parameters()]
    batch, responses = _batch(trainer)
    stats = trainer.step(batch["input_ids"], responses, [torch.tensor(1.0), 0.5, torch.tensor([0.2]), 0.0])
    for key in (
        "ppo/loss/policy",
        "ppo/loss/value",
        "ppo/loss/total",
        "objective/kl",
        "objective/kl_coef",
        "env/reward_mean",
        "env/reward_std",
        "ppo/policy/clipfrac",
        "ppo/policy/approxkl",
        "ppo/learning_rate",
    ):
        assert key in stats and math.isfinite(float(np.mean(stats[key]))), key
    assert stats["env/reward_mean"] == pytest.approx(0.425)
    assert stats["env/reward_std"] == pytest.approx(np.std([1.0, 0.5, 0.2, 0.0], ddof=1), rel=1e-5)
    assert stats["objective/kl_coef"] == pytest.approx(trainer.config.init_kl_coef)
    assert stats["ppo/learning_rate"] == pytest.approx(trainer.config.learning_rate)
    assert 0.0 <= stats["ppo/policy/clipfrac"] <= 1.0 and stats["ppo/policy/approxkl"] >= 0.0
    assert all(not p.requires_grad for p in trainer.ref_model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(ref_before, trainer.ref_model.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(policy_before, trainer.model.parameters(), strict=True))
    trainer.log_stats(stats, {**batch, "response": ["x"] * 4}, [1.0, 0.5, 0.2, 0.0])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda q, r, s: (q[:3], r, s), "same length"),
        (lambda q, r, s: (q, r, s[:3]), "same length"),
        (lambda q, r, s: (q[:2] * 1, r[:2], s[:2]), "batch_size=4"),
        (lambda q, r, s: (q, [x.tolist() for x in r], s), r"responses\[0\] must be a torch.Tensor"),
        (lambda q, r, s: (q, r, [torch.ones(2)] * 4), "scalar"),
        (lambda q, r, s: (q, r, ["good"] * 4), "scalar tensor or a number"),
        (lambda q, r, s: (q, r, [float("nan")] * 4), "finite"),
        (lambda q, r, s: (torch.stack([x[:1] for x in q]), r, s), "must be a list"),
    ],
)
def test_step_rejects_bad_input_clearly(trainer, mutate, message):
    batch, responses = _batch(trainer)
    q, r, s = mutate(list(batch["input_ids"]), list(responses), [1.0] * 4)
    with pytest.raises(ValueError, match=message):
        trainer.step(q, r, s)


def test_config_names_unknown_and_unsupported_fields():
    with pytest.raises(ConfigError, match="Did you mean: learning_rate"):
        PPOConfig(learning_rat=1e-5)
    with pytest.raises(ConfigError, match="early_stopping"):
        PPOConfig(early_stopping=True)
    with pytest.raises(ConfigError, match="kl_penalty"):
        PPOConfig(kl_penalty="full")
    cfg = PPOConfig(batch_size=8, mini_batch_size=2, gradient_accumulation_steps=2, learning_rate=1.41e-5).to_config(
        world_size=2
    )
    assert (cfg.rollout.batch_size, cfg.ppo.mini_batch_size, cfg.ppo.gradient_accumulation_steps) == (16, 8, 2)
    assert cfg.optim.lr == 1.41e-5
    with pytest.raises(ConfigError, match="batch_size=6 must be a multiple of mini_batch_size"):
        PPOConfig(batch_size=6, mini_batch_size=4)


def test_value_head_model_from_object_and_forward(saved_model):
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(saved_model)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(lm)
    model.config.pad_token_id = 1
    assert lm.config.pad_token_id == 1
    logits, loss, values = model(torch.tensor([[5, 6, 7]]))
    assert logits.shape[:2] == (1, 3) and values.shape == (1, 3) and loss is None
    assert model.num_parameters() == sum(p.numel() for p in lm.parameters()) + model.v_head.weight.numel() + 1


def test_no_eos_penalty_hits_only_responses_that_never_ended(trainer):
    # Width-1 responses that are EOS alone have ended: the engine reads that from the tokens, not
    # from how much of the width the mask covers (which cannot tell them apart when pad == EOS).
    from ppo_dist.rewards import RewardNormalizer
    from ppo_dist.rl.rollout import Rollout

    experience, eos = trainer.learner.experience, trainer.tokenizer.eos_token_id
    experience.normalizer = RewardNormalizer(no_eos_penalty=-1.0)
    queries, query_mask = torch.tensor([[5, 6], [7, 8], [9, 10]]), torch.ones(3, 2, dtype=torch.long)
    responses, response_mask = torch.tensor([[eos], [eos], [4]]), torch.ones(3, 1, dtype=torch.long)
    batch = experience.from_rollout(Rollout(queries, query_mask, responses, response_mask), torch.zeros(3), step=1)
    assert batch.scores.tolist() == [0.0, 0.0, -1.0]


def test_finished_fraction_counts_responses_that_end_with_eos_even_at_full_width(trainer):
    from ppo_dist.rl.rollout import Rollout

    eos, pad = trainer.tokenizer.eos_token_id, trainer.tokenizer.pad_token_id
    queries, query_mask = torch.tensor([[5, 6], [7, 8], [9, 10], [11, 12]]), torch.ones(4, 2, dtype=torch.long)
    # ended at full width, ended early, ran out of tokens, ended at full width
    responses = torch.tensor([[5, eos], [eos, pad], [6, 7], [8, eos]])
    response_mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1]])
    stats = trainer.learner.step(Rollout(queries, query_mask, responses, response_mask), torch.zeros(4))
    assert stats["tokens/responses_finished_frac"] == pytest.approx(0.75)  # "shorter than the width" would say 0.25
