"""The run configuration: one dataclass tree (:mod:`.schema`), YAML + dotted CLI (:mod:`.loading`),
batch arithmetic (:mod:`.plan`), the stage registry (:mod:`.stages`) and every check (:mod:`.validation`).

``from ppo_dist.config import Config, parse_args, validate`` is all a caller needs.
"""

from .fields import ConfigError, doc_field, exact_div, section
from .loading import build_arg_parser, from_dict, load_yaml, parse_args
from .plan import BatchPlan, plan_batches
from .schema import (
    DECODE_LOOPS,
    LR_SCHEDULERS,
    ON_INVALID,
    PRECISIONS,
    ROLLOUT_ENGINES,
    SEED_PROMPTS,
    VLLM_CPU_HEAD_SIZES,
    CheckpointConfig,
    Config,
    DataConfig,
    EvalConfig,
    LogConfig,
    LoRAConfig,
    ModelConfig,
    OptimConfig,
    PPOConfig,
    RewardConfig,
    RolloutConfig,
    TrainConfig,
)
from .stages import STAGES, StagePlan, stage_names
from .validation import validate

__all__ = [
    "BatchPlan",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DECODE_LOOPS",
    "DataConfig",
    "EvalConfig",
    "LR_SCHEDULERS",
    "LoRAConfig",
    "LogConfig",
    "ModelConfig",
    "ON_INVALID",
    "OptimConfig",
    "PPOConfig",
    "PRECISIONS",
    "ROLLOUT_ENGINES",
    "RewardConfig",
    "RolloutConfig",
    "SEED_PROMPTS",
    "STAGES",
    "StagePlan",
    "TrainConfig",
    "VLLM_CPU_HEAD_SIZES",
    "build_arg_parser",
    "doc_field",
    "exact_div",
    "from_dict",
    "load_yaml",
    "parse_args",
    "plan_batches",
    "section",
    "stage_names",
    "validate",
]
