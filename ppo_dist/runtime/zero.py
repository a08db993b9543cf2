"""DeepSpeed ZeRO specifics: the DeepSpeed config derived from ppo_dist's, the sharded reference
model, and parameter gathering for generation.

:func:`gathered_for_generation` uses engine internals (the ZeRO-3 parameter offload's hook lists and
``ds_active_sub_modules``), tested with DeepSpeed 0.15 to 0.19: pyproject.toml pins ``deepspeed<0.20``.

``accelerate launch --config_file accelerate_configs/zero*.yaml`` chooses the stage and offload;
everything that must agree with the PPO loop (micro batch, accumulation, clipping, precision) is
written here from the ppo_dist config. A user DeepSpeed JSON (``deepspeed_config_file``) may leave
those values ``"auto"``; a hard-coded value that disagrees is an error naming both numbers.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from ..config import BatchPlan, Config, ConfigError

ZERO3_SIZED_KEYS = ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold")


def deepspeed_requested() -> bool:
    """True when ``accelerate launch`` was given a DeepSpeed config."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def deepspeed_plugin(cfg: Config, plan: BatchPlan):
    """The launcher's DeepSpeed plugin with ppo_dist's batch/clipping/precision written in."""
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin()  # stage, offload and a user JSON come from the launcher's environment
    ds = plugin.deepspeed_config
    clip = cfg.optim.max_grad_norm or 0.0
    wanted: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": plan.local_micro_batch_size,
        "gradient_accumulation_steps": plan.gradient_accumulation_steps,
        "train_batch_size": plan.local_micro_batch_size * plan.gradient_accumulation_steps * plan.world_size,
        "gradient_clipping": clip,
    }
    sources = {
        "train_micro_batch_size_per_gpu": "ppo.mini_batch_size / (world size x ppo.gradient_accumulation_steps)",
        "gradient_accumulation_steps": "ppo.gradient_accumulation_steps",
        "train_batch_size": "ppo.mini_batch_size",
        "gradient_clipping": "optim.max_grad_norm",
    }
    for key, value in wanted.items():
        current = ds.get(key, "auto")
        if current not in ("auto", None) and float(current) != float(value):
            raise ConfigError(
                f"DeepSpeed config has {key}={current} but the ppo_dist config gives {value} "
                f'(from {sources[key]}); set it to "auto" or remove it from the DeepSpeed config'
            )
        ds[key] = value
    if plugin.zero_stage == 3:
        # Consolidate the sharded weights (in the training dtype) when the final model is saved.
        ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
        plugin.zero3_save_16bit_model = True
        # Buffer sizes from the model's hidden size (filled by accelerate at prepare) instead of
        # DeepSpeed's fixed defaults (500M-element reduce bucket, 50M-element prefetch bucket).
        for key in ZERO3_SIZED_KEYS:
            ds["zero_optimization"].setdefault(key, "auto")
    offload = ds["zero_optimization"].get("offload_optimizer", {}).get("device", "none")
    if offload not in (None, "none") and "zero_force_ds_cpu_optimizer" not in ds:
        # Otherwise accelerate swaps our AdamW for DeepSpeedCPUAdam (a JIT-compiled op) while the LR
        # scheduler keeps pointing at the discarded AdamW: the two share param_group dicts only until a
        # checkpoint is loaded, after which a resumed run trains at a frozen LR. DeepSpeed steps the
        # client optimizer on the CPU master weights just as well. A DeepSpeed JSON may set it true.
        ds["zero_force_ds_cpu_optimizer"] = False
    plugin.gradient_accumulation_steps = plan.gradient_accumulation_steps
    plugin.gradient_clipping = clip
    for name in ("fp16", "bf16"):
        enabled = ds.get(name, {}).get("enabled", "auto")
        if enabled != "auto" and bool(enabled) != (cfg.model.dtype == name):
            raise ConfigError(
                f"DeepSpeed config has {name}.enabled={enabled} but model.dtype={cfg.model.dtype}; "
                f'set {name}.enabled to "auto" so model.dtype decides'
            )
    return plugin


def zero_stage(accelerator) -> int:
    """The ZeRO stage in use (0 when DeepSpeed is not)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return int(plugin.zero_stage) if plugin is not None else 0


def prepare_reference(accelerator, ref_model):
    """Place the frozen reference model: sharded by an inference-only engine under ZeRO-3,
    replicated on the device otherwise (stages 1-2 shard only training state, which it has none of)."""
    if zero_stage(accelerator) != 3:
        return ref_model.to(accelerator.device)
    import deepspeed

    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    config = {
        "train_micro_batch_size_per_gpu": ds["train_micro_batch_size_per_gpu"],
        "train_batch_size": ds["train_batch_size"],
        "gradient_accumulation_steps": ds["gradient_accumulation_steps"],
        "zero_optimization": {
            "stage": 3,
            "offload_param": ds["zero_optimization"].get("offload_param", {"device": "none"}),
            **{k: ds["zero_optimization"][k] for k in ZERO3_SIZED_KEYS[1:] if k in ds["zero_optimization"]},
        },
        "fp16": {"enabled": bool(ds.get("fp16", {}).get("enabled", False) is True)},
        "bf16": {"enabled": bool(ds.get("bf16", {}).get("enabled", False) is True)},
        "steps_per_print": 10**12,
    }
    engine, *_ = deepspeed.initialize(model=ref_model, config=config)
    engine.eval()
    return engine


@contextlib.contextmanager
def gathered_for_generation(accelerator, model, enabled: bool = True):
    """Yield the unwrapped policy ready for ``generate``.

    Under ZeRO-3 with ``enabled`` the sharded parameters are all-gathered once, for the whole
    rollout, and released afterwards; otherwise ZeRO-3 gathers each layer at every forward, i.e.
    once per generated token. Other stages hold full parameters: nothing to do.
    """
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    if zero_stage(accelerator) != 3 or not enabled:
        yield unwrapped
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        offload = model.optimizer.parameter_offload
        # Without its hooks the module keeps the gathered weights for every token's forward.
        for param in offload.module.parameters():
            param.ds_active_sub_modules.clear()
        hooks = offload.forward_hooks + offload.backward_hooks
        for hook in hooks:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield unwrapped
        finally:
            offload._register_deepspeed_module(offload.module)
