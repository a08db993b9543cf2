"""Stage ``sft``: supervised fine-tuning with TRL's ``SFTTrainer``.

Data: ``prompt`` + ``completion`` columns (loss on the completion only, ``sft.completion_only_loss``),
``messages`` (conversations; needs a tokenizer with a chat template) or ``text``. TRL appends the
EOS token to plain-text completions, so the model learns to end its responses. Longer sequences
are cut to ``sft.max_length`` tokens (the start is kept). Output: ``final_model/``, a causal LM that
is a valid ``model.name_or_path`` for the rm, dpo and ppo stages.
"""

from __future__ import annotations

from ..data import sft_examples
from .runner import StageRunner


class Runner(StageRunner):
    headline = ("loss", "mean_token_accuracy")
    trl_classes = ("SFTConfig", "SFTTrainer")

    def stage_args(self) -> dict:
        s = self.cfg.sft
        return {"packing": s.packing, "completion_only_loss": s.completion_only_loss, "dataset_text_field": "text"}

    def embedded_data(self) -> dict[str, list]:
        return sft_examples()

    def check_format(self, dataset, columns) -> None:
        super().check_format(dataset, columns)
        if columns != ("prompt", "completion"):
            self.args.completion_only_loss = None  # only defined for prompt/completion data

    def build_model(self):
        return self.causal_lm(self.cfg.model.name_or_path)
