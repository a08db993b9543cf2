"""Local stand-ins for the hub assets legacy trl examples load: a causal LM, a sentiment classifier,
the IMDB dataset and a T5-shaped seq2seq LM, all tiny, built from configs and saved offline."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2ForSequenceClassification, T5Config, T5ForConditionalGeneration

from ppo_dist.config import SEED_PROMPTS, ModelConfig
from ppo_dist.models import build_tiny_gpt2, load_tokenizer
from ppo_dist.models.tokenizer import CORPUS

TINY = ModelConfig(tiny_n_layer=1, tiny_n_embd=32, tiny_n_head=2)


def save_causal_lm(path: Path) -> Path:
    """The tiny GPT-2 and its tokenizer (stand-in for ``gpt2`` / ``lvwerra/gpt2-imdb``)."""
    torch.manual_seed(0)
    tokenizer = load_tokenizer(ModelConfig())
    build_tiny_gpt2(TINY, tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_sentiment_classifier(path: Path) -> Path:
    """A 2-label GPT-2 classifier labelled NEGATIVE/POSITIVE (stand-in for ``lvwerra/distilbert-imdb``)."""
    torch.manual_seed(1)
    tokenizer = load_tokenizer(ModelConfig())
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=32,
        n_layer=1,
        n_head=2,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2ForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_imdb_like_dataset(path: Path, n: int = 24) -> Path:
    """A ``load_dataset(path, split="train")`` directory shaped like IMDB: ``text`` (> 200 characters) and ``label``."""
    sentences = [s for line in CORPUS.splitlines() for s in line.split("。") if len(s) > 4]
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "train.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            text = SEED_PROMPTS[i % len(SEED_PROMPTS)]
            k = i
            while len(text) <= 200:
                text += "。" + sentences[k % len(sentences)]
                k += 7
            f.write(json.dumps({"text": text, "label": i % 2}, ensure_ascii=False) + "\n")
    # One review too short for the example's `len(review) > 200` filter.
    with open(path / "train.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "太短了", "label": 0}, ensure_ascii=False) + "\n")
    return path


def build_tiny_t5(tokenizer) -> T5ForConditionalGeneration:
    """A T5-shaped encoder-decoder (one layer each side, d_model 32) on the embedded tokenizer."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5ForConditionalGeneration(config)


def save_seq2seq_lm(path: Path) -> Path:
    torch.manual_seed(0)
    tokenizer = load_tokenizer(ModelConfig())
    build_tiny_t5(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


if __name__ == "__main__":
    import sys

    out = Path(sys.argv[1])
    print(save_causal_lm(out / "lm"), save_sentiment_classifier(out / "clf"), save_imdb_like_dataset(out / "imdb"))
