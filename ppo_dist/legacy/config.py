"""The legacy ``trl.PPOConfig`` (trl <= 0.11): every field, default and help text, as a dataclass.

Being a dataclass, it parses the way legacy scripts parse it::

    parser = HfArgumentParser((ScriptArguments, PPOConfig))
    args, ppo_config = parser.parse_args_into_dataclasses()

(``tyro.cli`` works too.) :meth:`PPOConfig.to_config` maps it onto ppo_dist's :class:`~ppo_dist.config.Config`.
Sizes are per process, as in legacy trl. Fields fall in three groups:

* training settings ppo_dist implements (``learning_rate``, ``batch_size``, ``cliprange``, ...);
* settings that only carry script or tracking information (``query_dataset``, ``reward_model``,
  ``dataset_num_proc``, ``exp_name``, ...) and fields the trainer fills in (``world_size``,
  ``global_batch_size``, ...): kept as given;
* legacy features ppo_dist does not implement (``early_stopping``, ``ratio_threshold``,
  ``kl_penalty="full"``, ...): accepted only at their legacy default, so no setting is silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from ..config import Config, ConfigError
from ..runtime.tracking import check_trackers

logger = logging.getLogger(__name__)


class JSONDict(dict):
    """A ``dict`` that also accepts its JSON text, so ``--project_kwargs '{"logging_dir": "logs"}'`` parses."""

    def __init__(self, value: Any = None, /, **kwargs: Any):
        if isinstance(value, str):
            value = json.loads(value)  # argparse turns the ValueError into "invalid JSONDict value"
            if not isinstance(value, dict):
                raise ValueError(f"expected a JSON object, got {type(value).__name__}")
        super().__init__(value or {}, **kwargs)


try:  # legacy trl parsed JSON dict flags with tyro; ppo_dist does not need tyro installed
    import tyro

    JSONField = Annotated[JSONDict, tyro.conf.arg(metavar="JSON", constructor=json.loads)]
except ImportError:
    JSONField = JSONDict


def _script_name() -> str:
    """Legacy default of ``exp_name``: the running script's file name without ``.py``."""
    return Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "ppo"


def _field(default: Any, help: str, **kwargs: Any) -> Any:
    if isinstance(default, dict):
        return field(default_factory=JSONDict, metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


# Legacy features ppo_dist does not implement: accepted only at these (legacy default) values.
UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "early_stopping": (False, "ppo_dist always runs every PPO epoch; watch objective/kl or set a KL guard"),
    "target_kl": (1.0, "it only acts with early_stopping, which ppo_dist does not implement"),
    "compare_steps": (1, "it only acts with push_to_hub_if_best_kwargs, which ppo_dist does not implement"),
    "ratio_threshold": (10.0, "ppo_dist does not skip mini-batches on a high PPO ratio"),
    "push_to_hub_if_best_kwargs": ({}, "ppo_dist does not push to the Hub during training; save with "
                                   "PPOTrainer.save_pretrained and push that directory"),
}  # fmt: skip
# kl_penalty values: legacy "kl" and ppo_dist's estimators; "abs", "mse", "full" are refused.
KL_PENALTY = {"kl": "k1", "k1": "k1", "k3": "k3"}
_PRECISION = {"no": "fp32", "fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}
DEFAULT_STEPS = 20000


@dataclass
class PPOConfig:
    """Configuration of the legacy ``PPOTrainer``; fields, defaults and help texts of trl 0.11.4.

    ``batch_size`` and ``mini_batch_size`` count samples per process; the batch arithmetic is
    checked on construction (``batch_size`` must be a multiple of ``mini_batch_size ×
    gradient_accumulation_steps``), as legacy trl did.
    """

    exp_name: str = field(default_factory=_script_name, metadata={"help": "Name of this experiment."})
    seed: int = _field(0, "Random seed.")
    log_with: Literal["wandb", "tensorboard"] | None = _field(
        None,
        "Log with either 'wandb' or 'tensorboard', check https://huggingface.co/docs/accelerate/usage_guides/tracking "
        "for more details.",
    )
    task_name: str | None = _field(None, "Name of task to use - used only for tracking purposes.")
    model_name: str = _field(
        "gpt2",
        "Name of model to use - used only for tracking purposes (ppo_dist: loaded when PPOTrainer gets no model).",
    )
    query_dataset: str = _field("stanfordnlp/imdb", "Name of dataset to query - used only for tracking purposes.")
    reward_model: str = _field(
        "sentiment-analysis:lvwerra/distilbert-imdb", "Reward model to use - used only for tracking purposes."
    )
    remove_unused_columns: bool = _field(
        True, "Remove unused columns from the dataset (ppo_dist: batches keep every column either way)."
    )
    tracker_kwargs: JSONField = _field(
        {},
        'Keyword arguments for the tracker (e.g. python ppo.py --tracker_kwargs=\'{"wandb": {"entity": '
        '"my_wandb_entity", "name": "my_exp_name"}}\'.',
    )
    accelerator_kwargs: JSONField = _field(
        {}, "Keyword arguments for the accelerator (ppo_dist reads mixed_precision; other keys are refused)."
    )
    project_kwargs: JSONField = _field({}, "Keyword arguments for the accelerator project config (e.g. `logging_dir`).")
    tracker_project_name: str = _field("trl", "Name of project to use for tracking.")
    push_to_hub_if_best_kwargs: JSONField = _field(
        {}, "Keyword arguments for pushing model to the hub during training (e.g. repo_id)."
    )
    steps: int = _field(
        DEFAULT_STEPS,
        "Number of training steps (ppo_dist: PPOTrainer.dataloader yields this many batches, cycling the data; at "
        "the default, one pass over the dataset as in legacy trl).",
    )
    learning_rate: float = _field(1.41e-5, "Learning rate for the optimizer.")
    adap_kl_ctrl: bool = _field(True, "Use adaptive KL control, otherwise linear.")
    init_kl_coef: float = _field(0.2, "Initial KL penalty coefficient (used for adaptive and linear control).")
    kl_penalty: Literal["kl", "abs", "mse", "full", "k1", "k3"] = _field(
        "kl",
        "kl penalty options: 'kl': model_logp - ref_logp,  'abs': abs(kl),  'mse': mean squared error mse(kl) and "
        "'full': the actual kl for all tokens in the distribution (ppo_dist: 'kl' (= 'k1') and 'k3'; 'abs', 'mse' "
        "and 'full' are refused).",
    )
    target: float = _field(6.0, "Target KL value for adaptive KL control.")
    horizon: float = _field(10000.0, "Horizon for adaptive KL control.")
    gamma: float = _field(1.0, "Gamma parameter for advantage calculation.")
    lam: float = _field(0.95, "Lambda parameter for advantage calculation.")
    cliprange: float = _field(0.2, "Range for clipping in PPO policy gradient loss.")
    cliprange_value: float = _field(0.2, "Range for clipping values in loss calculation.")
    vf_coef: float = _field(0.1, "Scaling factor for value loss.")
    batch_size: int = _field(128, "Number of samples per optimisation step.")
    forward_batch_size: int | None = _field(
        None, "DEPRECATED: use `mini_batch_size` instead, which does the same thing."
    )
    mini_batch_size: int = _field(128, "Number of samples optimized in each mini batch.")
    gradient_accumulation_steps: int = _field(1, "Number of gradient accumulation steps.")
    world_size: int | None = _field(None, "Number of processes to use for distributed training.")
    ppo_epochs: int = _field(4, "Number of optimisation epochs per batch of samples.")
    max_grad_norm: float | None = _field(None, "Maximum gradient norm for gradient clipping.")
    optimize_cuda_cache: bool | None = _field(
        None, "DEPRECATED: use `optimize_device_cache` instead, which does the same thing."
    )
    optimize_device_cache: bool = _field(False, "Optimize device cache for slightly more memory-efficient training.")
    early_stopping: bool = _field(False, "Whether to stop the PPO optimization loop early is the KL too high.")
    target_kl: float = _field(1.0, "Stop early if we exceed this value by over 50 percent.")
    compare_steps: int = _field(1, "Compare the current step with the previous `compare_steps` steps.")
    ratio_threshold: float = _field(10.0, "Skip mini-batches with high PPO ratios that can cause loss spikes.")
    use_score_scaling: bool = _field(False, "Use score scaling.")
    use_score_norm: bool = _field(False, "Use score normalization. Only applicable if `use_score_scaling` is True.")
    score_clip: float | None = _field(None, "Score clipping.")
    whiten_rewards: bool = _field(False, "Whiten the rewards before computing advantages.")
    gradient_checkpointing: bool = _field(False, "Enable gradient checkpointing.")
    is_encoder_decoder: bool | None = _field(
        None,
        "When using the `model_init` argument (callable) to instantiate the model instead of the `model` argument, "
        "you need to specify if the model returned by the callable is an encoder-decoder model.",
    )
    is_peft_model: bool | None = _field(None, "Whether the model is a PEFT model.")
    backward_batch_size: int | None = _field(None, "Number of samples optimized in an `optimizer.step()` call.")
    global_backward_batch_size: int | None = _field(None, "Effective `backward_batch_size` across all processes.")
    global_batch_size: int | None = _field(None, "Effective `batch_size` across all processes.")
    dataset_num_proc: int | None = _field(None, "Number of processes to use for processing the dataset.")
    # ppo_dist additions, in the legacy naming style
    max_new_tokens: int = _field(32, "ppo_dist: tokens per response when generate() gets no max_new_tokens.")
    output_dir: str = _field(
        "runs/ppo_trainer", "ppo_dist: tracker logs go here when project_kwargs has no logging_dir."
    )
    packing: bool = _field(
        False, "ppo_dist: forward passes on samples packed end to end instead of padded (ppo.packing)."
    )

    def __post_init__(self) -> None:
        for name in ("tracker_kwargs", "accelerator_kwargs", "project_kwargs", "push_to_hub_if_best_kwargs"):
            value = getattr(self, name)
            if value is None:
                value = {}
            if not isinstance(value, (dict, str)):
                raise ConfigError(f"PPOConfig.{name} must be a dict (or its JSON text), got {type(value).__name__}")
            setattr(self, name, JSONDict(value))
        for name, (default, why) in UNSUPPORTED.items():
            if getattr(self, name) != default:
                raise ConfigError(
                    f"PPOConfig.{name}={getattr(self, name)!r} is not supported by ppo_dist (only {default!r}): {why}"
                )
        if self.kl_penalty not in KL_PENALTY:
            raise ConfigError(
                f"PPOConfig.kl_penalty={self.kl_penalty!r} is not supported by ppo_dist; use one of "
                f"{sorted(KL_PENALTY)} ('kl' is the legacy default)"
            )
        if self.use_score_norm and not self.use_score_scaling:
            raise ConfigError(
                "PPOConfig.use_score_norm only applies with use_score_scaling=True (legacy trl ignored it alone); "
                "set both to standardise the scores"
            )
        if self.use_score_scaling and not self.use_score_norm:
            raise ConfigError(
                "PPOConfig.use_score_scaling without use_score_norm (divide by the running std only) is not "
                "supported by ppo_dist; set use_score_norm=True too to standardise the scores"
            )
        if self.log_with:
            check_trackers(self._trackers())
        if self.forward_batch_size is not None:
            logger.warning(
                "PPOConfig.forward_batch_size is deprecated: it overwrites mini_batch_size (%d -> %d) as in legacy trl",
                self.mini_batch_size,
                self.forward_batch_size,
            )
            self.mini_batch_size = self.forward_batch_size
        for name in ("batch_size", "mini_batch_size", "gradient_accumulation_steps", "ppo_epochs", "steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"PPOConfig.{name} must be a positive integer, got {value!r}")
        for name, ok, rule in (
            ("learning_rate", self.learning_rate > 0, "> 0"),
            ("cliprange", self.cliprange > 0, "> 0"),
            ("cliprange_value", self.cliprange_value > 0, "> 0"),
            ("gamma", 0 <= self.gamma <= 1, "in [0, 1]"),
            ("lam", 0 <= self.lam <= 1, "in [0, 1]"),
            ("init_kl_coef", self.init_kl_coef >= 0, ">= 0"),
            ("target", self.target > 0, "> 0"),
            ("horizon", self.horizon > 0, "> 0"),
            ("max_new_tokens", self.max_new_tokens > 0, "> 0"),
        ):
            if not ok:
                raise ConfigError(f"PPOConfig.{name} must be {rule}, got {getattr(self, name)!r}")
        backward = self.mini_batch_size * self.gradient_accumulation_steps
        if self.batch_size % backward:
            raise ConfigError(
                f"PPOConfig.batch_size={self.batch_size} must be a multiple of mini_batch_size × "
                f"gradient_accumulation_steps = {self.mini_batch_size} × {self.gradient_accumulation_steps} = "
                f"{backward}"
            )
        self.backward_batch_size = backward  # derived, as in legacy trl: a value given is overwritten
        self.total_ppo_epochs = math.ceil(self.steps / self.batch_size)

    def _trackers(self) -> list[str]:
        w = self.log_with
        return [str(t) for t in w] if isinstance(w, (list, tuple)) else [str(w)] if w else []

    @property
    def steps_given(self) -> bool:
        """Whether ``steps`` differs from the legacy default: the dataloader then yields ``steps`` batches,
        else one pass (legacy). An explicit ``steps=20000`` reads as the default: a dataclass (and
        ``HfArgumentParser``, which passes every field) cannot tell the two apart."""
        return self.steps != DEFAULT_STEPS

    def fill_runtime_fields(self, world_size: int, is_encoder_decoder: bool, is_peft_model: bool) -> None:
        """Write back what the legacy trainer wrote into its config once the run is known.

        The sizes are derived and overwritten, as in legacy trl; an ``is_encoder_decoder`` or
        ``is_peft_model`` given that contradicts the model raises instead of being overwritten.
        """
        for name, value in (("is_encoder_decoder", bool(is_encoder_decoder)), ("is_peft_model", bool(is_peft_model))):
            given = getattr(self, name)
            if given is not None and given != value:
                raise ConfigError(f"PPOConfig.{name}={given!r} but the model passed to PPOTrainer has {name}={value}")
            setattr(self, name, value)
        self.world_size = world_size
        self.global_batch_size = self.batch_size * world_size
        self.global_backward_batch_size = self.backward_batch_size * world_size

    def to_dict(self) -> dict[str, Any]:
        """Every field, nested dicts flattened with ``/`` (legacy ``flatten_dict``), for tracker configs."""
        out: dict[str, Any] = {}

        def flatten(d: dict, prefix: str) -> None:
            for k, v in d.items():
                if isinstance(v, dict):
                    flatten(v, f"{prefix}{k}/")
                else:
                    out[f"{prefix}{k}"] = v

        flatten({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "")
        out["total_ppo_epochs"] = self.total_ppo_epochs
        return out

    def to_config(self, world_size: int = 1) -> Config:
        """The ppo_dist config for ``world_size`` processes (legacy sizes are per process)."""
        cfg = Config()
        W = world_size
        cfg.rollout.batch_size = self.batch_size * W
        cfg.rollout.max_new_tokens = self.max_new_tokens
        cfg.rollout.forward_batch_size = self.batch_size
        extra = sorted(set(self.accelerator_kwargs) - {"mixed_precision"})
        if extra:
            raise ConfigError(
                f"PPOConfig.accelerator_kwargs: ppo_dist builds the Accelerator itself and reads only mixed_precision; "
                f"got {extra} (use accelerate launch / accelerate config for the rest)"
            )
        precision = self.accelerator_kwargs.get("mixed_precision", "no")
        if precision not in _PRECISION:
            raise ConfigError(
                f"PPOConfig.accelerator_kwargs['mixed_precision']={precision!r}: use one of {sorted(_PRECISION)}"
            )
        cfg.model.dtype = _PRECISION[precision]
        extra = sorted(set(self.project_kwargs) - {"logging_dir", "project_dir"})
        if extra:
            raise ConfigError(f"PPOConfig.project_kwargs: ppo_dist reads logging_dir and project_dir only; got {extra}")
        p = cfg.ppo
        p.ppo_epochs, p.cliprange, p.cliprange_value, p.vf_coef = (
            self.ppo_epochs,
            self.cliprange,
            self.cliprange_value,
            self.vf_coef,
        )
        p.gamma, p.lam, p.whiten_rewards = self.gamma, self.lam, self.whiten_rewards
        p.packing = self.packing
        p.gradient_accumulation_steps = self.gradient_accumulation_steps
        # Legacy: an optimiser step every mini_batch_size * gradient_accumulation_steps samples per process.
        p.mini_batch_size = self.mini_batch_size * self.gradient_accumulation_steps * W
        p.kl_coef, p.adaptive_kl, p.kl_target, p.kl_horizon = (
            self.init_kl_coef,
            self.adap_kl_ctrl,
            self.target,
            self.horizon,
        )
        p.kl_estimator = KL_PENALTY[self.kl_penalty]
        cfg.optim.lr, cfg.optim.max_grad_norm = self.learning_rate, self.max_grad_norm
        cfg.model.gradient_checkpointing = self.gradient_checkpointing
        cfg.reward.normalize = bool(self.use_score_scaling and self.use_score_norm)
        cfg.reward.clip = self.score_clip
        cfg.train.seed, cfg.train.total_steps = self.seed, self.steps
        cfg.train.output_dir = self.project_kwargs.get("logging_dir") or self.project_kwargs.get(
            "project_dir", self.output_dir
        )
        cfg.log.trackers, cfg.log.project_name = self._trackers(), self.tracker_project_name
        return cfg


_FIELDS = [f.name for f in dataclasses.fields(PPOConfig)]


class UnknownFieldError(ConfigError, TypeError):
    """An unknown ``PPOConfig`` keyword: a ``TypeError`` like any bad keyword, and a ``ConfigError``."""


def _reject_unknown_names(init):
    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for name in kwargs:
            if name not in _FIELDS:
                close = difflib.get_close_matches(name, _FIELDS, n=3, cutoff=0.5)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise UnknownFieldError(f"PPOConfig has no field {name!r}.{hint}")
        init(self, *args, **kwargs)

    return __init__


PPOConfig.__init__ = _reject_unknown_names(PPOConfig.__init__)
