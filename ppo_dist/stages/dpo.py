"""Stage ``dpo``: direct preference optimisation with TRL's ``DPOTrainer`` (sigmoid loss, Rafailov et al. 2023).

Data: ``prompt`` / ``chosen`` / ``rejected`` (plain text, or conversations with a chat template).
The policy starts from ``model.name_or_path`` (typically the sft stage's ``final_model/``); the
frozen reference is ``model.ref_name_or_path``, or the starting model loaded once more. Sequences longer
than ``dpo.max_length`` tokens are cut (the start is kept). TensorBoard gets
``train/rewards/margins`` and ``train/rewards/accuracies`` (the implicit reward
``beta * log(pi / pi_ref)`` of chosen minus rejected, and how often it is positive), and the same on
the held-out pairs under ``eval/``. Output: ``final_model/``, a causal LM.
"""

from __future__ import annotations

from transformers import set_seed

from ..data import preference_pairs
from ..models import freeze
from .runner import StageRunner


class Runner(StageRunner):
    headline = ("rewards/accuracies", "rewards/margins")
    trl_classes = ("DPOConfig", "DPOTrainer")

    def stage_args(self) -> dict:
        return {"beta": self.cfg.dpo.beta, "disable_dropout": self.cfg.model.disable_dropout}

    def embedded_data(self) -> dict[str, list]:
        return preference_pairs()

    def build_model(self):
        return self.causal_lm(self.cfg.model.name_or_path)

    def trainer_kwargs(self, model) -> dict:
        # Loaded (or, for the embedded model, rebuilt from the same seed) rather than deep-copied from the
        # policy: a copy breaks the reference's parameter gathering under ZeRO-3.
        set_seed(self.cfg.train.seed)
        m = self.cfg.model
        return {"ref_model": freeze(self.causal_lm(m.ref_name_or_path or m.name_or_path))}
