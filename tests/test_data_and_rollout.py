"""Prompt sources, the per-process prompt stream, EOS truncation and padding-independent forward passes."""

import json

import datasets
import pytest
import torch

from ppo_dist.config import ConfigError, DataConfig, ModelConfig
from ppo_dist.data import PromptStream, load_prompt_dataset, tokenize_prompts
from ppo_dist.models import build_policy, load_tokenizer
from ppo_dist.rl.batching import plan_micro_batches
from ppo_dist.rl.roles import score_in_micro_batches
from ppo_dist.rl.rollout import Rollout, left_pad, right_pad, truncate_at_eos

from .launch import TINY_ARGS, launch

ROWS = [{"query": f"问题{i}", "answer": f"答案{i}"} for i in range(10)]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "disk", "load_dataset"])
def test_prompt_sources_load_with_all_columns(tmp_path, fmt):
    ds = datasets.Dataset.from_list(ROWS)
    if fmt == "jsonl":
        path = tmp_path / "p.jsonl"
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS))
        cfg = DataConfig(path=str(path))
    elif fmt == "csv":
        ds.to_csv(str(tmp_path / "p.csv"))
        cfg = DataConfig(path=str(tmp_path / "p.csv"))
    elif fmt == "parquet":
        ds.to_parquet(str(tmp_path / "p.parquet"))
        cfg = DataConfig(path=str(tmp_path / "p.parquet"))
    elif fmt == "disk":
        datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "d"))
        cfg = DataConfig(path=str(tmp_path / "d"))
    else:  # datasets.load_dataset on a local data directory
        (tmp_path / "hubish").mkdir()
        ds.to_json(str(tmp_path / "hubish" / "train.jsonl"), force_ascii=False)
        cfg = DataConfig(dataset_name=str(tmp_path / "hubish"))
    loaded = load_prompt_dataset(cfg)
    assert loaded["query"] == [r["query"] for r in ROWS]
    assert loaded["answer"] == [r["answer"] for r in ROWS]


def test_missing_prompt_column_lists_available_columns(tmp_path):
    with pytest.raises(ConfigError, match="available columns: query, answer"):
        load_prompt_dataset(_cfg_with_rows(tmp_path))


def _cfg_with_rows(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS))
    return DataConfig(path=str(path), prompt_column="prompt")


def test_prompt_stream_shards_cycles_and_reshuffles():
    ds = datasets.Dataset.from_dict({"query": [str(i) for i in range(10)]})
    ids = [torch.tensor([i]) for i in range(10)]
    stream = PromptStream(ds, ids, "query", batch_size=4, seed=0)
    # Process shards of a step are disjoint, contiguous parts of the global batch.
    g = stream.global_indices(0)
    assert stream.local_batch(0, 0, 2).indices + stream.local_batch(0, 1, 2).indices == g
    # 10 steps of 4 = 4 epochs of 10: every epoch is a permutation, and epochs differ.
    flat = [i for step in range(10) for i in stream.global_indices(step)]
    epochs = [flat[i : i + 10] for i in range(0, 40, 10)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1]
    # A pure function of (seed, step): a new stream gives the same batches (exact resume).
    assert PromptStream(ds, ids, "query", 4, seed=0).global_indices(7) == stream.global_indices(7)


def test_truncate_at_eos_keeps_eos_and_masks_after():
    eos, pad = 0, 1
    r = torch.tensor([[5, 6, 0, 7, 0], [0, 5, 5, 5, 5], [5, 5, 5, 5, 5]])
    out, mask = truncate_at_eos(r, eos, pad)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert out.tolist() == [[5, 6, 0, 1, 1], [0, 1, 1, 1, 1], [5, 5, 5, 5, 5]]


def test_logprobs_and_values_do_not_depend_on_padding_or_micro_batching():
    torch.manual_seed(0)
    tok = load_tokenizer(ModelConfig())
    policy = build_policy(ModelConfig(tiny_n_layer=1, tiny_n_embd=32, tiny_n_head=2), tok, value_head=True)
    queries = [torch.tensor([5, 6, 7]), torch.tensor([8]), torch.tensor([9, 10])]
    responses = [torch.tensor([11, 12, 0]), torch.tensor([13, 14, 15, 16]), torch.tensor([17])]

    def score(qs, rs, micro_batches):
        rollout = Rollout(*left_pad(qs, tok.pad_token_id), *right_pad(rs, tok.pad_token_id))
        return score_in_micro_batches(policy, rollout, micro_batches, with_values=True)

    lp_all, v_all = score(queries, responses, [torch.arange(3)])
    lp_split, v_split = score(queries, responses, [torch.tensor([2, 0]), torch.tensor([1])])
    torch.testing.assert_close(lp_split, lp_all, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v_split, v_all, rtol=1e-5, atol=1e-5)
    for i in range(3):  # one sample alone: no padding at all
        lp1, v1 = score([queries[i]], [responses[i]], [torch.arange(1)])
        n = len(responses[i])
        torch.testing.assert_close(lp_all[i, :n], lp1[0, :n], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v_all[i, :n], v1[0, :n], rtol=1e-5, atol=1e-5)
        assert (lp_all[i, n:] == 0).all()


def test_token_budget_packs_sorted_lengths_within_the_budget():
    q = torch.tensor([2, 2, 6, 1, 3, 2])
    r = torch.tensor([3, 8, 8, 1, 2, 1])
    bins = plan_micro_batches(q, r, max_samples=0, max_tokens=20)
    assert sorted(i for b in bins for i in b.tolist()) == list(range(6))  # every sample exactly once
    for b in bins:  # padded size rows x (longest query + longest response) within the budget
        assert len(b) * (q[b].max() + r[b].max()) <= 20 or len(b) == 1
    assert [b.tolist() for b in bins] == [[2], [1, 0], [4, 5, 3]]  # longest first: 14 | 10, 5 | 5, 3, 2
    fixed = plan_micro_batches(q, r, max_samples=4)
    assert [b.tolist() for b in fixed] == [[0, 1, 2, 3], [4, 5]]


def test_embedded_tokenizer_round_trips_chinese():
    tok = load_tokenizer(ModelConfig())
    text = "今天天气很好，我喜欢学习！Hello 123"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.pad_token_id != tok.eos_token_id


def test_prompts_longer_than_max_are_truncated_from_the_left():
    tok = load_tokenizer(ModelConfig())
    ids = tokenize_prompts(["今天天气很好，我们一起去公园散步吧"], tok, max_length=3, truncation="left")
    full = tok("今天天气很好，我们一起去公园散步吧", add_special_tokens=False)["input_ids"]
    assert ids[0].tolist() == full[-3:]
    with pytest.raises(ConfigError, match="max_prompt_length=3"):
        tokenize_prompts(["今天天气很好，我们一起去公园散步吧"], tok, max_length=3, truncation="error")


def test_training_from_a_locally_saved_model_directory(tmp_path):
    """The real from_pretrained path: a model saved to disk is trained, with a dataset file."""
    first = tmp_path / "first"
    launch([*TINY_ARGS, "--train.total_steps", "1", "--train.output_dir", str(first)])
    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS))
    second = tmp_path / "second"
    launch(
        [
            *TINY_ARGS,
            "--model.name_or_path",
            str(first / "final_model"),
            "--data.path",
            str(data),
            "--train.output_dir",
            str(second),
        ]
    )
    assert (second / "final_model" / "value_head.pt").is_file()
