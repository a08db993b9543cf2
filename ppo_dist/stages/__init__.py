"""The stages of the RLHF pipeline besides PPO, trained with TRL: ``sft``, ``rm`` (reward model), ``dpo``.

The registry (names, dataset columns, which settings each reads, their checks) is in
:mod:`ppo_dist.config.stages`, light enough for ``--help`` and validation; a stage's runner
(``ppo_dist.stages.<name>.Runner``, on :class:`.runner.StageRunner`) is imported only when a run needs it.
"""

from __future__ import annotations

import importlib
import importlib.util

from ..config import STAGES, ConfigError


def runner_class(name: str) -> type:
    """The runner of stage ``name`` (not ppo): ``Runner(cfg)``, ``.train()``, ``.close()`` like ``Trainer``."""
    if importlib.util.find_spec("trl") is None:
        raise ConfigError(f"stage {name} trains with TRL, which is not installed: pip install 'ppo_dist[trl]'")
    return importlib.import_module(f"{__name__}.{STAGES[name].module}").Runner
