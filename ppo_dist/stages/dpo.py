"""Stage ``dpo``: direct preference optimisation with TRL's ``DPOTrainer`` (sigmoid loss, Rafailov et al. 2023).

Data: ``prompt`` / ``chosen`` / ``rejected`` (plain text, or conversations with a chat template).
The policy starts from ``model.name_or_path`` (typically the sft stage's ``final_model/``); the
frozen reference is ``model.ref_name_or_path``, or a copy of the starting policy. Sequences longer
than ``dpo.max_length`` tokens are cut (the start is kept). TensorBoard gets
``train/rewards/margins`` and ``train/rewards/accuracies`` (the implicit reward
``beta * log(pi / pi_ref)`` of chosen minus rejected, and how often it is positive), and the same on
the held-out pairs under ``eval/``. Output: ``final_model/``, a causal LM.
"""

from __future__ import annotations

import copy

from ..models import freeze, load_causal_lm
from ..pipeline_data import preference_pairs
from .runner import StageRunner


class Runner(StageRunner):
    headline = ("rewards/accuracies", "rewards/margins")

    def config_class(self) -> type:
        from trl import DPOConfig

        return DPOConfig

    def trainer_class(self) -> type:
        from trl import DPOTrainer

        return DPOTrainer

    def stage_args(self) -> dict:
        return {"beta": self.cfg.dpo.beta, "disable_dropout": self.cfg.model.disable_dropout}

    def embedded_data(self) -> dict[str, list]:
        return preference_pairs()

    def build_model(self):
        return self.causal_lm(self.cfg.model.name_or_path)

    def trainer_kwargs(self, model) -> dict:
        m = self.cfg.model
        if m.ref_name_or_path:
            ref = load_causal_lm(m.ref_name_or_path, trust_remote_code=m.trust_remote_code)
        else:
            ref = copy.deepcopy(model)
        return {"ref_model": freeze(ref)}
