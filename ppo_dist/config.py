"""One dataclass tree for a run, loaded from YAML with dotted command-line overrides.

Convention: ``python train.py --config configs/default.yaml --ppo.cliprange 0.1 --train.total_steps 20``.
Every field below is a command-line option ``--<section>.<field>``; values are parsed as YAML
(``--reward.functions '[chinese_rule, length]'`` works). ``train.py --help`` prints every field
with its doc and default. The top-level ``stage`` (``--stage``) picks ppo or one of the TRL-trained
stages (sft, rm, dpo; see :mod:`ppo_dist.stages`), which read their own section (``sft``, ``rm``, ``dpo``).

Batch vocabulary (all sizes count prompts/samples, not tokens):
  rollout.batch_size          global: prompts generated per PPO step over all processes
  ppo.mini_batch_size         global: samples per optimiser step over all processes
  ppo.gradient_accumulation_steps
                              micro-batches per optimiser step on each process
  local_*                     the same quantities on one process (global / world size)
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field(s) and value(s)."""


def doc_field(default: Any, doc: str, choices: typing.Callable[[], typing.Iterable[str]] | None = None) -> Any:
    """A dataclass field with a one-line doc shown by ``train.py --help``.

    ``choices`` returns the allowed values from the registry that implements them (imported lazily,
    so that loading a config stays light); ``validate`` and ``--help`` both read it.
    """
    metadata = {"doc": doc, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=metadata)
    if dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: dataclasses.replace(d), metadata=metadata)
    return field(default=default, metadata=metadata)


def section(cls: type, doc: str) -> Any:
    """A nested section (``model.lora`` ...): its fields are ``--model.lora.<field>`` options."""
    return field(default_factory=cls, metadata={"doc": doc, "choices": None})


# Registries that live in torch-importing modules, read lazily.
def _algos_registry(name: str) -> typing.Callable[[], list[str]]:
    def names() -> list[str]:
        from . import algos

        return list(getattr(algos, name))

    return names


def _stage_names() -> list[str]:
    from .stages import stage_names

    return stage_names()


# optim.lr_scheduler -> transformers' scheduler name (every one after optim.warmup_steps of linear warm-up).
LR_SCHEDULERS = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}
# reward.on_invalid: what rewards.Reward does with a NaN/inf/None value.
ON_INVALID = ("error", "skip_sample")
# model.dtype -> accelerate's mixed_precision; the one map of precision names.
PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


SEED_PROMPTS = [
    "今天天气",
    "我喜欢",
    "学习编程",
    "这部电影",
    "人工智能",
    "我的朋友",
    "周末的时候",
    "春天来了",
    "读书让我",
    "音乐让人",
    "写一句关于春天的话",
    "说说你今天的心情",
    "介绍一下你的家乡",
    "给朋友写一段祝福",
    "谈谈学习的方法",
    "描述一下你最喜欢的食物",
]


@dataclass
class LoRAConfig:
    r: int = doc_field(0, "LoRA rank; 0 = off (every weight is trained)")
    alpha: float = doc_field(16.0, "LoRA scaling numerator (adapter output x alpha / r)")
    dropout: float = doc_field(0.0, "dropout on the adapter input (kept at 0 by model.disable_dropout)")
    target_modules: list | str = doc_field(
        "all-linear", "modules that get adapters: 'all-linear' (every linear layer but the LM head) or a list of names"
    )


@dataclass
class ModelConfig:
    name_or_path: str | None = doc_field(None, "HF causal LM (local dir or hub name); empty = embedded tiny GPT-2")
    ref_name_or_path: str | None = doc_field(None, "reference model; empty = frozen copy of the initial policy")
    tokenizer_name_or_path: str | None = doc_field(
        None, "tokenizer; empty = the policy's (embedded model: shipped BPE)"
    )
    dtype: str = doc_field("fp32", "precision via accelerate mixed precision", choices=lambda: PRECISIONS)
    trust_remote_code: bool = doc_field(False, "pass trust_remote_code to from_pretrained")
    disable_dropout: bool = doc_field(
        True, "set every dropout probability to 0 (PPO ratios need a deterministic policy)"
    )
    tiny_n_layer: int = doc_field(2, "embedded model: transformer layers")
    tiny_n_embd: int = doc_field(64, "embedded model: hidden size")
    tiny_n_head: int = doc_field(4, "embedded model: attention heads")
    tiny_n_positions: int = doc_field(256, "embedded model: maximum sequence length")
    gradient_checkpointing: bool = doc_field(
        False, "recompute activations in the backward pass of the PPO update (generation keeps its KV cache)"
    )
    logits_chunk_tokens: int = doc_field(
        0, "positions per chunk when turning hidden states into logprobs/entropy; 0 = auto (~16M logits a chunk)"
    )
    lora: LoRAConfig = section(LoRAConfig, "LoRA adapters (peft); the reference is then the adapter-disabled policy")


@dataclass
class DataConfig:
    prompts: list = doc_field(SEED_PROMPTS, "inline prompts, used when neither data.path nor data.dataset_name is set")
    path: str | None = doc_field(None, "prompt file (.jsonl/.json/.csv/.parquet) or a datasets.save_to_disk directory")
    dataset_name: str | None = doc_field(None, "datasets.load_dataset name (hub or local script/dir)")
    dataset_config: str | None = doc_field(None, "datasets.load_dataset config name")
    split: str = doc_field("train", "dataset split")
    prompt_column: str = doc_field("query", "column holding the prompt text")
    max_prompt_length: int = doc_field(64, "prompts longer than this many tokens are handled by data.truncation")
    truncation: str = doc_field(
        "left", "over-long prompts: left (keep the end, warn once) | error", choices=lambda: ("left", "error")
    )


@dataclass
class RolloutConfig:
    batch_size: int = doc_field(32, "global prompts per PPO step, over all processes")
    max_new_tokens: int = doc_field(32, "tokens sampled per response at most")
    temperature: float = doc_field(1.0, "sampling temperature")
    top_k: int = doc_field(0, "top-k sampling; 0 = off")
    top_p: float = doc_field(1.0, "nucleus sampling; 1.0 = off")
    do_sample: bool = doc_field(True, "sample (true) or greedy decode (false)")
    generation_batch_size: int = doc_field(0, "prompts per generate() call on a process; 0 = the whole local batch")
    gather_for_generation: bool = doc_field(
        True,
        "ZeRO-3: gather the policy once per rollout for generate (fast; needs the full model to fit on one device) "
        "instead of layer by layer at every token",
    )
    forward_batch_size: int = doc_field(16, "samples per micro-batch for logprob/value passes on a process")
    forward_tokens: int = doc_field(
        0, "token budget (query + response) per micro-batch for logprob/value passes; 0 = rollout.forward_batch_size"
    )
    n_samples_per_prompt: int = doc_field(
        1, "responses sampled per prompt; a prompt's responses form a group (grpo, rloo, ...)"
    )


@dataclass
class PPOConfig:
    ppo_epochs: int = doc_field(4, "optimisation passes over each rollout batch")
    mini_batch_size: int = doc_field(8, "global samples per optimiser step")
    gradient_accumulation_steps: int = doc_field(1, "micro-batches accumulated per optimiser step on each process")
    shuffle: bool = doc_field(True, "reshuffle mini-batches every PPO epoch (seeded, identical on all processes)")
    cliprange: float = doc_field(0.2, "policy ratio clip epsilon")
    cliprange_value: float = doc_field(0.2, "value prediction clip around the rollout values")
    vf_coef: float = doc_field(0.1, "value loss coefficient")
    entropy_coef: float = doc_field(0.0, "entropy bonus coefficient")
    gamma: float = doc_field(1.0, "discount factor (gae, reinforce_pp)")
    lam: float = doc_field(0.95, "GAE lambda")
    kl_coef: float = doc_field(0.05, "initial KL penalty coefficient")
    kl_estimator: str = doc_field(
        "k1",
        "per-token KL estimator (Schulman 2020): k1 = log ratio, k2 = squared, k3 = unbiased and >= 0",
        choices=_algos_registry("KL_ESTIMATORS"),
    )
    kl_placement: str = doc_field(
        "reward",
        "where the KL to the reference acts: reward (per-token penalty, legacy PPO) | loss (beta*KL term, GRPO)",
        choices=lambda: ("reward", "loss"),
    )
    adaptive_kl: bool = doc_field(True, "adapt kl_coef towards kl_target (Ziegler et al. 2019)")
    kl_target: float = doc_field(6.0, "adaptive KL: target sequence KL")
    kl_horizon: float = doc_field(10000.0, "adaptive KL: horizon in samples")
    advantage_estimator: str = doc_field(
        "gae",
        "advantage estimator; gae uses a value head, the others are critic-free",
        choices=_algos_registry("ADVANTAGE_ESTIMATORS"),
    )
    loss_agg: str = doc_field(
        "token_mean", "how token losses are averaged over a mini-batch", choices=_algos_registry("LOSS_AGGREGATIONS")
    )
    micro_batch_tokens: int = doc_field(
        0, "token budget (query + response) per update micro-batch, length-sorted; 0 = fixed-size micro-batches"
    )
    on_policy_shortcut: bool = doc_field(
        True,
        "when one optimiser step consumes the whole rollout (1 epoch, 1 mini-batch, no critic, KL not in the reward), "
        "take the old logprobs from the update's own forward instead of a separate pass",
    )
    whiten_advantages: bool = doc_field(True, "gae: normalise advantages over all valid tokens of all processes")
    whiten_rewards: bool = doc_field(False, "normalise per-token rewards (shift kept) before GAE")


@dataclass
class OptimConfig:
    lr: float = doc_field(1e-4, "AdamW learning rate")
    weight_decay: float = doc_field(0.0, "AdamW weight decay")
    adam_beta1: float = doc_field(0.9, "AdamW beta1")
    adam_beta2: float = doc_field(0.999, "AdamW beta2")
    adam_eps: float = doc_field(1e-8, "AdamW epsilon")
    max_grad_norm: float | None = doc_field(1.0, "clip the global gradient norm; empty = off")
    lr_scheduler: str = doc_field("constant", "learning-rate schedule after warm-up", choices=lambda: LR_SCHEDULERS)
    warmup_steps: int = doc_field(0, "optimiser steps of linear warm-up")


@dataclass
class RewardConfig:
    functions: list = doc_field(
        ["chinese_rule"],
        "reward functions: built-in name, module:fn, file.py:fn, reward_model, http or an http(s):// URL",
    )
    weights: list | None = doc_field(None, "one weight per function; empty = all 1.0")
    timeout: float = doc_field(60.0, "seconds one reward function call may take before it fails (RewardError)")
    on_invalid: str = doc_field(
        "error",
        "NaN/inf/None/non-number reward value: error (raise) | skip_sample (drop the sample, count it)",
        choices=lambda: ON_INVALID,
    )
    length_target: int = doc_field(50, "built-in length: characters that earn the full 1.0")
    words: list = doc_field([], "built-in contains_any: 1.0 when the completion contains any of these words")
    model_path: str | None = doc_field(
        None, "reward_model: local dir of a sequence-classification model (num_labels=1) and its tokenizer"
    )
    model_max_length: int = doc_field(512, "reward_model: tokens scored per prompt+completion, truncated from the left")
    model_batch_size: int = doc_field(16, "reward_model: texts per forward pass on a process")
    url: str | None = doc_field(
        None, "http: reward service URL, POSTed {prompts, completions, <columns>}, answers {rewards}"
    )
    http_timeout: float = doc_field(10.0, "http: seconds per request attempt")
    http_retries: int = doc_field(
        3, "http: extra attempts after a connection error, timeout or 5xx (never after a 4xx)"
    )
    http_backoff: float = doc_field(0.5, "http: seconds before the first retry, doubled for each further one")
    no_eos_penalty: float | None = doc_field(
        None, "added to the score of responses that never produced EOS (use a negative value); empty = off"
    )
    scale: float = doc_field(1.0, "scores are multiplied by this (after the EOS penalty)")
    normalize: bool = doc_field(False, "standardise scores with running mean/std over all processes and steps")
    clip: float | None = doc_field(None, "clip final scores to [-clip, clip]; empty = off")

    def validate(self) -> None:
        """Reward-section checks; ``validate(cfg)`` calls this."""
        fns, w = self.functions, self.weights
        _check(len(fns) > 0, "reward.functions must name at least one reward")
        _check(
            w is None or len(w) == len(fns),
            f"reward.weights has {0 if w is None else len(w)} entries but reward.functions has {len(fns)}",
        )
        _check(self.timeout > 0, f"reward.timeout must be > 0 seconds, got {self.timeout}")
        _check(self.length_target > 0, f"reward.length_target must be > 0, got {self.length_target}")
        _check(
            "contains_any" not in fns or len(self.words) > 0,
            "reward.functions has contains_any but reward.words is empty",
        )
        _check(
            "reward_model" not in fns or bool(self.model_path),
            "reward.functions has reward_model but reward.model_path is empty",
        )
        _check(
            self.model_max_length > 0 and self.model_batch_size > 0,
            "reward.model_max_length and reward.model_batch_size must be > 0",
        )
        _check("http" not in fns or bool(self.url), "reward.functions has http but reward.url is empty")
        _check(
            self.http_timeout > 0 and self.http_retries >= 0 and self.http_backoff >= 0,
            f"reward.http_timeout must be > 0, http_retries and http_backoff >= 0, got {self.http_timeout}, "
            f"{self.http_retries}, {self.http_backoff}",
        )
        _check(self.scale > 0, f"reward.scale must be > 0, got {self.scale}")
        _check(self.clip is None or self.clip > 0, f"reward.clip must be > 0 or empty, got {self.clip}")


@dataclass
class TrainConfig:
    total_steps: int = doc_field(150, "PPO steps to run (the data cycles as needed)")
    seed: int = doc_field(42, "seed for models, data order, sampling and mini-batches")
    output_dir: str = doc_field("runs/default", "where the final model, logs and checkpoints go")
    save_final_model: bool = doc_field(True, "save the final policy + tokenizer with save_pretrained")
    collective_timeout: int = doc_field(1800, "seconds a process waits in a collective before failing (dead peer)")
    cpu_malloc_reuse: bool = doc_field(
        True,
        "training on CPU with glibc: keep freed memory in the process for reuse (mallopt) instead of returning it to "
        "the kernel after every large tensor; faster, holds more resident memory",
    )
    compile: bool = doc_field(
        False,
        "torch.compile the policy's forward (inductor, dynamic shapes) for the logprob passes and the update; "
        "generation stays eager. Pays off on GPUs with long runs; compiling takes minutes",
    )
    max_bad_steps: int = doc_field(
        3, "stop (NumericsError) after this many consecutive PPO steps with skipped updates or non-finite statistics"
    )
    max_kl: float | None = doc_field(
        None, "KL guard: sequence KL to the reference (objective/kl, nats) above which train.kl_guard acts; empty = off"
    )
    min_entropy: float | None = doc_field(
        None, "KL guard: objective/entropy (nats per response) below which train.kl_guard acts; empty = off"
    )
    kl_guard: str = doc_field(
        "stop",
        "when train.max_kl / train.min_entropy is crossed: warn (log, go on) | stop (KLGuardError; that step is not "
        "checkpointed)",
        choices=lambda: ("warn", "stop"),
    )


@dataclass
class LogConfig:
    log_every: int = doc_field(1, "write scalars every N PPO steps")
    trackers: list = doc_field(["tensorboard"], "accelerate trackers: tensorboard, wandb, mlflow, ... ([] = none)")
    project_name: str = doc_field("ppo_dist", "tracker project / run name")
    samples_every: int = doc_field(
        10, "TensorBoard: a table of sample prompts/completions/rewards every N steps; 0 = never"
    )
    progress_bar: bool = doc_field(True, "show a progress bar on the main process")


@dataclass
class CheckpointConfig:
    every: int = doc_field(0, "save a resumable checkpoint every N PPO steps; 0 = only at the end")
    keep: int = doc_field(2, "keep the newest K checkpoints")
    resume: str | None = doc_field(None, "auto = newest complete checkpoint in output_dir, or a checkpoint path")


@dataclass
class StageSection:
    """Settings every TRL-trained stage (sft, rm, dpo) has; a run reads only its own stage's section."""

    batch_size: int = doc_field(
        16, "global examples per optimiser step over all processes (sft: sequences; rm, dpo: preference pairs)"
    )
    gradient_accumulation_steps: int = doc_field(1, "micro-batches accumulated per optimiser step on each process")
    max_length: int = doc_field(
        128, "tokens of prompt + completion at most (see the stage for how longer ones are cut)"
    )
    eval_fraction: float = doc_field(0.15, "share of the dataset held out (seeded) and evaluated at the end; 0 = none")
    eval_every: int = doc_field(0, "also evaluate on the held-out part every N optimiser steps; 0 = only at the end")


@dataclass
class SFTSection(StageSection):
    completion_only_loss: bool = doc_field(
        True, "prompt/completion data: loss on the completion tokens only (false: on the whole sequence)"
    )
    packing: bool = doc_field(False, "pack several sequences into each max_length row (TRL best-fit packing)")


@dataclass
class RMSection(StageSection):
    center_rewards_coefficient: float | None = doc_field(
        None, "weight of a (chosen + rejected)^2 term keeping scores near 0 (Eisenstein et al. 2023: 0.01); empty = off"
    )


@dataclass
class DPOSection(StageSection):
    beta: float = doc_field(0.1, "DPO beta: strength of the implicit KL to the reference (model.ref_name_or_path)")


@dataclass
class Config:
    stage: str = doc_field(
        "ppo",
        "what this run trains: PPO, or sft / rm / dpo through TRL's trainers (ppo_dist/stages)",
        choices=_stage_names,
    )
    model: ModelConfig = section(ModelConfig, "policy, reference and tokenizer")
    data: DataConfig = section(DataConfig, "prompts")
    rollout: RolloutConfig = section(RolloutConfig, "sampling responses")
    ppo: PPOConfig = section(PPOConfig, "advantages, losses and the update")
    optim: OptimConfig = section(OptimConfig, "optimiser and learning-rate schedule")
    reward: RewardConfig = section(RewardConfig, "reward functions and score post-processing")
    train: TrainConfig = section(TrainConfig, "run length, output, numerics guards")
    log: LogConfig = section(LogConfig, "trackers and logging cadence")
    checkpoint: CheckpointConfig = section(CheckpointConfig, "checkpoints and resume")
    sft: SFTSection = section(SFTSection, "stage sft: supervised fine-tuning (TRL SFTTrainer)")
    rm: RMSection = section(RMSection, "stage rm: reward model on preference pairs (TRL RewardTrainer)")
    dpo: DPOSection = section(DPOSection, "stage dpo: direct preference optimisation (TRL DPOTrainer)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"ppo.cliprange": 0.2, "model.lora.r": 0, ...}`` for hyperparameter logging."""
        return dict(_walk(self))


# ---------------------------------------------------------------- loading and overriding


def _is_section(f: dataclasses.Field, hints: dict) -> bool:
    return dataclasses.is_dataclass(hints[f.name]) if isinstance(hints[f.name], type) else False


def _walk(obj: Any, prefix: str = "") -> typing.Iterator[tuple[str, Any]]:
    """``(dotted name, value)`` of every leaf field, depth first."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if _is_section(f, hints):
            yield from _walk(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def _leaf_fields(cls: type = Config, prefix: str = "") -> typing.Iterator[tuple[str, dataclasses.Field, Any]]:
    """``(dotted name, field, type hint)`` of every leaf field of ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if _is_section(f, hints):
            yield from _leaf_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, hints[f.name]


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else f" Valid: {', '.join(sorted(options))}."


def _coerce(path: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the annotation ``hint``; ints are accepted for floats."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(path, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-5" as a string
            return float(value)
        except ValueError:
            pass
    base = origin or hint
    if base is list and isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: expected {getattr(base, '__name__', base)}, got {type(value).__name__} {value!r}")
    return value


def _apply(obj: Any, data: dict, prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            what = "config section or key" if not prefix else "key"
            raise ConfigError(f"unknown {what} {path!r}.{_suggest(str(key), list(fields))}")
        if _is_section(fields[key], hints):
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"section {path!r} must be a mapping, got {value!r}")
            _apply(getattr(obj, key), value, f"{path}.")
        else:
            setattr(obj, key, _coerce(path, value, hints[key]))


def from_dict(data: dict, base: Config | None = None) -> Config:
    """Apply a nested dict onto ``base`` (default: defaults), with type checks and key suggestions."""
    cfg = base or Config()
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(data).__name__}")
    _apply(cfg, data, "")
    return cfg


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    return data or {}


def _choices(f: dataclasses.Field) -> list[str] | None:
    choices = f.metadata.get("choices")
    return None if choices is None else list(choices())


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Distributed PPO for causal language models. Values: YAML file, then --section.field overrides.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", default=None, help="YAML run config (sections as below)")
    defaults = dict(_walk(Config()))
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, f, _ in _leaf_fields():
        group_name = name.rpartition(".")[0] or "run"
        group = groups.get(group_name) or groups.setdefault(group_name, parser.add_argument_group(group_name))
        choices = _choices(f)
        doc = f.metadata.get("doc", "") + (f" (one of: {', '.join(choices)})" if choices else "")
        group.add_argument(
            f"--{name}",
            dest=name,
            default=argparse.SUPPRESS,
            metavar="VALUE",
            help=f"{doc} (default: {defaults[name]!r})",
        )
    return parser


def parse_args(argv: list[str] | None = None) -> Config:
    """YAML file (``--config``) then ``--section.field value`` overrides; values parsed as YAML."""
    parser = build_arg_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        options = [a.option_strings[0] for a in parser._actions if a.option_strings]
        raise ConfigError(f"unknown argument {unknown[0]!r}.{_suggest(unknown[0].split('=')[0], options)}")
    overrides = {k: v for k, v in vars(args).items() if k != "config"}
    cfg = from_dict(load_yaml(args.config)) if args.config else Config()
    hints = {name: hint for name, _, hint in _leaf_fields()}
    nested: dict[str, Any] = {}
    for key, raw in overrides.items():
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (int, float, bool)) and hints[key] is str:
            value = raw
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return from_dict(nested, cfg)


# ---------------------------------------------------------------- validation


def exact_div(a: int, b: int, what: str) -> int:
    """``a // b``, or a ConfigError with ``what`` (which names both numbers) when it does not divide."""
    if b <= 0 or a % b != 0:
        raise ConfigError(what)
    return a // b


@dataclass(frozen=True)
class BatchPlan:
    """Batch arithmetic of a run, checked once. Global sizes unprefixed, per-process ``local_``.

    ``batch_size`` counts *samples* (prompts x samples per prompt); the global sample list is each
    prompt repeated ``n_samples_per_prompt`` times, and process ``r`` takes its contiguous
    ``local_batch_size`` slice of it, so a prompt's group may straddle processes.
    """

    world_size: int
    num_prompts: int
    n_samples_per_prompt: int
    batch_size: int
    mini_batch_size: int
    local_batch_size: int
    local_mini_batch_size: int
    local_micro_batch_size: int
    gradient_accumulation_steps: int
    num_mini_batches: int


def plan_batches(cfg: Config, world_size: int) -> BatchPlan:
    r, p = cfg.rollout, cfg.ppo
    n = r.n_samples_per_prompt
    samples = r.batch_size * n
    what = f"rollout.batch_size={r.batch_size} x rollout.n_samples_per_prompt={n} = {samples} samples"
    local_batch = exact_div(samples, world_size, f"{what} must be divisible by the world size={world_size}")
    n_mini = exact_div(
        samples, p.mini_batch_size, f"{what} must be divisible by ppo.mini_batch_size={p.mini_batch_size}"
    )
    local_mini = exact_div(
        p.mini_batch_size,
        world_size,
        f"ppo.mini_batch_size={p.mini_batch_size} must be divisible by the world size={world_size}",
    )
    local_micro = exact_div(
        local_mini,
        p.gradient_accumulation_steps,
        f"per-process mini batch ppo.mini_batch_size/world_size={local_mini} must be divisible by "
        f"ppo.gradient_accumulation_steps={p.gradient_accumulation_steps}",
    )
    return BatchPlan(
        world_size=world_size,
        num_prompts=r.batch_size,
        n_samples_per_prompt=n,
        batch_size=samples,
        mini_batch_size=p.mini_batch_size,
        local_batch_size=local_batch,
        local_mini_batch_size=local_mini,
        local_micro_batch_size=local_micro,
        gradient_accumulation_steps=p.gradient_accumulation_steps,
        num_mini_batches=n_mini,
    )


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_choices(cfg: Config) -> None:
    """Every field declared with ``choices`` holds one of them (the registry that implements it)."""
    values = dict(_walk(cfg))
    for name, f, _ in _leaf_fields():
        choices = _choices(f)
        if choices is not None and values[name] not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {values[name]!r}")


def _validate_shared(cfg: Config) -> None:
    """Checks of the settings every stage reads (model, optim, train, log, checkpoint)."""
    o, t, lg, ck = cfg.optim, cfg.train, cfg.log, cfg.checkpoint
    _check(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
    _check(o.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {o.warmup_steps}")
    _check(t.total_steps > 0, f"train.total_steps must be > 0, got {t.total_steps}")
    _check(lg.log_every > 0, f"log.log_every must be > 0, got {lg.log_every}")
    _check(
        ck.every >= 0 and ck.keep > 0,
        f"checkpoint.every must be >= 0 and checkpoint.keep > 0, got {ck.every}, {ck.keep}",
    )


def validate(cfg: Config, world_size: int = 1):
    """Check values and batch arithmetic before anything heavy is loaded.

    Returns the PPO :class:`BatchPlan`, or for another stage the plan its package derives.
    """
    from . import algos, stages  # the registries (algos: torch only; stages: no heavy imports)

    _check_choices(cfg)
    stages.check_settings_used(cfg)
    _validate_shared(cfg)
    if cfg.stage != "ppo":
        return stages.validate_stage(cfg, world_size)
    m, d, r, p, t, lg = cfg.model, cfg.data, cfg.rollout, cfg.ppo, cfg.train, cfg.log
    _check(d.max_prompt_length > 0, f"data.max_prompt_length must be > 0, got {d.max_prompt_length}")
    _check(
        bool(d.path or d.dataset_name or d.prompts),
        "data: give data.path, data.dataset_name or a non-empty data.prompts list",
    )
    _check(
        m.lora.r >= 0 and m.lora.alpha > 0, f"model.lora.r must be >= 0 and alpha > 0, got {m.lora.r}, {m.lora.alpha}"
    )
    _check(0 <= m.lora.dropout < 1, f"model.lora.dropout must be in [0, 1), got {m.lora.dropout}")
    _check(m.logits_chunk_tokens >= 0, f"model.logits_chunk_tokens must be >= 0, got {m.logits_chunk_tokens}")
    _check(r.batch_size > 0, f"rollout.batch_size must be > 0, got {r.batch_size}")
    _check(r.max_new_tokens > 0, f"rollout.max_new_tokens must be > 0, got {r.max_new_tokens}")
    longest = d.max_prompt_length + r.max_new_tokens
    _check(
        bool(m.name_or_path) or longest <= m.tiny_n_positions,
        f"data.max_prompt_length={d.max_prompt_length} + rollout.max_new_tokens={r.max_new_tokens} = {longest} "
        f"tokens do not fit the embedded model's model.tiny_n_positions={m.tiny_n_positions}; raise it",
    )
    _check(r.temperature > 0, f"rollout.temperature must be > 0, got {r.temperature}")
    _check(0 < r.top_p <= 1, f"rollout.top_p must be in (0, 1], got {r.top_p}")
    _check(
        r.top_k >= 0 and r.generation_batch_size >= 0, "rollout.top_k and rollout.generation_batch_size must be >= 0"
    )
    _check(r.forward_batch_size > 0, f"rollout.forward_batch_size must be > 0, got {r.forward_batch_size}")
    _check(r.forward_tokens >= 0, f"rollout.forward_tokens must be >= 0, got {r.forward_tokens}")
    _check(r.n_samples_per_prompt > 0, f"rollout.n_samples_per_prompt must be > 0, got {r.n_samples_per_prompt}")
    estimator = algos.ADVANTAGE_ESTIMATORS[p.advantage_estimator]
    _check(
        not estimator.needs_groups or r.n_samples_per_prompt >= 2,
        f"ppo.advantage_estimator={p.advantage_estimator} compares the responses to one prompt: it needs "
        f"rollout.n_samples_per_prompt >= 2, got {r.n_samples_per_prompt}",
    )
    _check(p.ppo_epochs > 0, f"ppo.ppo_epochs must be > 0, got {p.ppo_epochs}")
    _check(
        p.mini_batch_size > 0 and p.gradient_accumulation_steps > 0,
        "ppo.mini_batch_size and ppo.gradient_accumulation_steps must be > 0",
    )
    _check(p.micro_batch_tokens >= 0, f"ppo.micro_batch_tokens must be >= 0, got {p.micro_batch_tokens}")
    _check(p.cliprange > 0 and p.cliprange_value > 0, "ppo.cliprange and ppo.cliprange_value must be > 0")
    _check(0 <= p.gamma <= 1 and 0 <= p.lam <= 1, f"ppo.gamma={p.gamma} and ppo.lam={p.lam} must be in [0, 1]")
    _check(p.kl_coef >= 0, f"ppo.kl_coef must be >= 0, got {p.kl_coef}")
    _check(p.kl_target > 0 and p.kl_horizon > 0, "ppo.kl_target and ppo.kl_horizon must be > 0")
    _check(
        t.max_kl is None or p.kl_coef > 0,
        "train.max_kl needs a reference model to measure the KL against, but ppo.kl_coef=0 builds none",
    )
    _check(t.max_bad_steps > 0, f"train.max_bad_steps must be > 0, got {t.max_bad_steps}")
    _check(t.max_kl is None or t.max_kl > 0, f"train.max_kl must be > 0 or empty, got {t.max_kl}")
    _check(lg.samples_every >= 0, f"log.samples_every must be >= 0, got {lg.samples_every}")
    cfg.reward.validate()
    return plan_batches(cfg, world_size)
