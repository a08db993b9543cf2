"""The ``reward_model`` source: a sequence-classification model that scores ``prompt + completion``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..models import ModelLoadError, ensure_pad_token, load_pretrained, match_pad_token
from .errors import RewardSpecError


class RewardModelScorer:
    """Scores ``prompt + completion`` (plain concatenation) with a sequence-classification model.

    Model and tokenizer come from the same directory (``reward.model_path``). The model must have
    ``num_labels == 1``; the score is ``logits[:, 0]`` (float32). Texts are scored in micro-batches
    of ``batch_size``, right-padded, truncated from the left to ``max_length`` tokens so that the end
    of the response is always seen. A tokenizer without a pad token uses its EOS token (logged
    warning) and ``model.config.pad_token_id`` is set to it, because HF's classification heads pool
    the rightmost non-pad token. Eval mode, no grad.

    Every process holds a full copy of the reward model on its device (it is not sharded under
    ZeRO): size it to fit next to the policy.
    """

    def __init__(self, path: str, max_length: int = 512, batch_size: int = 16, device: str | torch.device = "cpu"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not path or not Path(path).is_dir():
            raise RewardSpecError(f"reward_model: reward.model_path {path!r} is not a directory")
        self.path, self.max_length, self.batch_size = path, max_length, batch_size
        try:
            self.tokenizer = load_pretrained(AutoTokenizer, "a tokenizer", path)
            model = load_pretrained(AutoModelForSequenceClassification, "a sequence classifier", path)
            ensure_pad_token(self.tokenizer, f"reward_model {path!r}: its tokenizer")
        except ModelLoadError as e:  # missing/corrupt files, an unknown architecture, no pad or EOS token
            raise RewardSpecError(f"reward_model: {e}") from None
        if model.config.num_labels != 1:
            raise RewardSpecError(
                f"reward_model {path!r} has num_labels={model.config.num_labels}; a reward model needs exactly 1 "
                "(score = logits[:, 0])"
            )
        match_pad_token(model, self.tokenizer)
        self.tokenizer.padding_side = "right"  # absolute-position models score identically to an unpadded forward
        self.tokenizer.truncation_side = "left"  # keep the end of the response
        model.eval().requires_grad_(False)
        self.model = model
        self.device = torch.device(device)
        self.model.to(self.device)

    def to(self, device: str | torch.device) -> RewardModelScorer:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **_columns: object) -> torch.Tensor:
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        scores = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
            )
            logits = self.model(
                input_ids=enc["input_ids"].to(self.device), attention_mask=enc["attention_mask"].to(self.device)
            ).logits
            scores.append(logits[:, 0].float())
        return torch.cat(scores) if scores else torch.zeros(0)
