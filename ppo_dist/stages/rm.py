"""Stage ``rm``: a reward model on preference pairs with TRL's ``RewardTrainer`` (Bradley-Terry loss).

Data: ``prompt`` / ``chosen`` / ``rejected`` as plain text. The model is a sequence classifier with
one output (``num_labels=1``) on ``model.name_or_path`` (typically the sft stage's
``final_model/``; the classification head is new) or on the embedded tiny GPT-2.

The pairs are tokenized here exactly as PPO's ``reward_model`` scores a sample
(:class:`ppo_dist.rewards.RewardModelScorer`): the plain concatenation ``prompt + completion``,
no EOS appended, cut from the left to ``rm.max_length`` tokens. (TRL's own preparation would
append EOS, which PPO's decoded completions never carry.) TensorBoard gets ``train/accuracy`` and
``train/margin`` (how often, and by how much, chosen outscores rejected), and the same on the
held-out pairs under ``eval/``. Output: ``final_model/``, a valid ``reward.model_path`` for PPO.
"""

from __future__ import annotations

from ..config import ConfigError
from ..data import preference_pairs
from ..models import load_pretrained, match_pad_token, tiny_gpt2_config
from .runner import StageRunner


class Runner(StageRunner):
    headline = ("accuracy", "margin")
    trl_classes = ("RewardConfig", "RewardTrainer")

    def stage_args(self) -> dict:
        return {
            "max_length": None,  # cut here, from the left, instead of TRL dropping long pairs
            "center_rewards_coefficient": self.cfg.rm.center_rewards_coefficient,
            "disable_dropout": self.cfg.model.disable_dropout,
        }

    def embedded_data(self) -> dict[str, list]:
        return preference_pairs()

    def check_format(self, dataset, columns) -> None:
        row = dataset[0]
        bad = [c for c in columns if not isinstance(row[c], str)]
        if bad:
            raise ConfigError(
                f"data: stage rm needs plain-text {', '.join(columns)} columns (PPO's reward_model scores "
                f"prompt + completion text); {', '.join(bad)} {'holds' if len(bad) == 1 else 'hold'} "
                f"{type(row[bad[0]]).__name__} values"
            )

    def prepare(self, dataset):
        tok, max_length = self.tokenizer, self.cfg.rm.max_length
        tok.truncation_side = "left"  # keep the end of the response, as RewardModelScorer does

        def encode(batch):
            out = {}
            for side in ("chosen", "rejected"):
                texts = [p + c for p, c in zip(batch["prompt"], batch[side], strict=True)]
                out[f"{side}_ids"] = tok(texts, truncation=True, max_length=max_length)["input_ids"]
            return out

        return dataset.map(encode, batched=True, remove_columns=dataset.column_names)

    def build_model(self):
        from transformers import AutoModelForSequenceClassification

        m = self.cfg.model
        if not m.name_or_path:
            config = tiny_gpt2_config(m, self.tokenizer)
            config.num_labels = 1
            return AutoModelForSequenceClassification.from_config(config)
        model = load_pretrained(
            AutoModelForSequenceClassification,
            "a sequence classifier",
            m.name_or_path,
            num_labels=1,
            trust_remote_code=m.trust_remote_code,
        )
        match_pad_token(model, self.tokenizer)
        return model
