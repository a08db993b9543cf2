"""Legacy trl value-head model classes and ``create_reference_model``, on ppo_dist's models.

``from_pretrained`` takes trl 0.11's keyword arguments:

* ``peft_config``: ``None`` or a ``peft`` config (e.g. ``LoraConfig``): the loaded LM is wrapped
  with ``peft.get_peft_model`` and the value-head model has ``is_peft_model = True``. A directory
  that holds a saved adapter (``adapter_config.json``) loads its base model plus the adapter
  (``is_trainable=True`` to go on training it).
* ``device_map``: ``None`` or one device for the whole model (legacy scripts pass
  ``{"": process_index}``; without CUDA that means this process's CPU). Maps over several devices are
  refused: each process trains a whole copy (use ZeRO-3 to shard).
* ``v_head_init_strategy`` (``None`` or ``"normal"``), ``v_head_initializer_range``,
  ``summary_dropout_prob``: the value head's initialisation; PPOTrainer trains with dropout off.
* ``load_in_8bit`` / ``load_in_4bit`` / ``quantization_config``: bitsandbytes needs CUDA, so they
  are refused on a machine without it.
* everything else (``trust_remote_code``, ``torch_dtype``, ``revision``, ...) goes to ``transformers``.

A value head saved by legacy trl inside ``model.safetensors`` / ``pytorch_model.bin``
(``v_head.summary.*``) is restored too, so legacy checkpoints load with their trained head.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from ..models import (
    VALUE_HEAD_FILE,
    CausalLMWithValueHead,
    ModelLoadError,
    freeze,
    is_peft_model,
    restore_value_head,
    strip_prefix,
)
from .seq2seq import Seq2SeqLMWithValueHead

logger = logging.getLogger(__name__)

# Where the transformer blocks live, per architecture (legacy trl's list): "{layer}" is the block index.
LAYER_PATTERNS = [
    "transformer.h.{layer}",
    "model.decoder.layers.{layer}",
    "gpt_neox.layers.{layer}",
    "model.layers.{layer}",
]
_QUANTISATION_ARGS = ("load_in_8bit", "load_in_4bit", "quantization_config")
_KBIT_ARGS = ("use_gradient_checkpointing", "gradient_checkpointing_kwargs")
_MULTI_DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


class _LegacyLoading:
    """``from_pretrained`` with the legacy keyword arguments, shared by both legacy classes (each loads
    its LM with its base class's ``_load_lm``)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | PreTrainedModel, **kwargs: Any):
        """Load the LM (path, hub name or model object), apply the legacy options, restore a saved head."""
        source = pretrained_model_name_or_path
        peft_config = kwargs.pop("peft_config", None)
        is_trainable = kwargs.pop("is_trainable", False)
        if kwargs.pop("reward_adapter", None) is not None:
            raise ValueError(
                "reward_adapter (a reward-model adapter inside the policy) is not supported by ppo_dist; score "
                "responses with a separate reward model"
            )
        kwargs.pop("reward_adapter_name", None)  # only meaningful with reward_adapter
        head_args = {k: kwargs.pop(k) for k in ("summary_dropout_prob", "v_head_initializer_range",
                                                "v_head_init_strategy") if k in kwargs}  # fmt: skip
        kbit_args = {k: kwargs.pop(k) for k in _KBIT_ARGS if k in kwargs}
        quantised = any(kwargs.get(k) for k in _QUANTISATION_ARGS)
        if quantised and not torch.cuda.is_available():
            given = [k for k in _QUANTISATION_ARGS if kwargs.get(k)]
            raise ValueError(
                f"{', '.join(given)}: quantised loading (bitsandbytes) needs a CUDA GPU and none is available; load "
                "the model unquantised on CPU"
            )
        if kbit_args and not (quantised and peft_config is not None):
            raise ValueError(f"{sorted(kbit_args)} apply only to quantised loading with a peft_config")
        if quantised and kwargs.get("device_map") is None:  # as legacy trl: the whole model on this process's GPU
            from accelerate import PartialState

            kwargs["device_map"] = {"": PartialState().local_process_index}
        device_map = _single_device_map(kwargs.pop("device_map", None))
        if device_map is not None:
            kwargs["device_map"] = device_map
        if peft_config is not None:
            _check_peft_config(peft_config)

        path = None if isinstance(source, (PreTrainedModel, torch.nn.Module)) else Path(str(source))
        if path is not None and (path / "adapter_config.json").is_file():
            if peft_config is not None:
                raise ValueError(
                    f"{str(path)!r} already holds a trained adapter: drop peft_config (pass is_trainable=True to go "
                    "on training that adapter)"
                )
            lm = _load_adapter(cls._load_lm, path, is_trainable, kwargs)
        else:
            if isinstance(source, torch.nn.Module):
                options = sorted(k for k, v in kwargs.items() if v not in (None, False))
                if options:
                    raise ValueError(f"loading options {options} need a path, not an already loaded model")
                lm = source
            else:
                lm = cls._load_lm(str(source), **kwargs)
            if peft_config is not None and is_peft_model(lm):
                raise ValueError("the model is already a PeftModel: drop peft_config")
            if peft_config is not None:
                from peft import get_peft_model, prepare_model_for_kbit_training

                if quantised:
                    lm = prepare_model_for_kbit_training(lm, **kbit_args)
                lm = get_peft_model(lm, peft_config)
        if getattr(lm.config, "is_encoder_decoder", False) and not getattr(cls, "is_encoder_decoder", False):
            raise ModelLoadError(
                f"{type(lm).__name__} is an encoder-decoder model: load it with AutoModelForSeq2SeqLMWithValueHead"
            )
        model = cls(lm)
        _init_value_head(model.v_head, **head_args)
        if path is not None:
            _restore_value_head(model.v_head, path)
        return model

    def save_pretrained(self, save_directory, state_dict: dict | None = None, **kwargs: Any) -> None:
        """Legacy layout: a LoRA model saves its adapter (not a merged model) at the top of the
        directory, so ``from_pretrained(directory)`` loads the base model plus the adapter again; the
        value head goes beside it. Without LoRA: a normal HF directory plus ``value_head.pt``."""
        if not self.is_peft_model:
            return super().save_pretrained(save_directory, state_dict=state_dict, **kwargs)
        from peft import get_peft_model_state_dict

        save_directory = Path(save_directory)
        state_dict = self.state_dict() if state_dict is None else state_dict
        lm_state = strip_prefix(state_dict, "pretrained_model.")
        adapter = get_peft_model_state_dict(self.pretrained_model, lm_state)
        self.pretrained_model.save_pretrained(save_directory, state_dict=adapter, **kwargs)
        if self.v_head is not None:
            head = {k: v.detach().cpu() for k, v in strip_prefix(state_dict, "v_head.").items()}
            torch.save(head, save_directory / VALUE_HEAD_FILE)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.pretrained_model.gradient_checkpointing_enable(**kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.pretrained_model.gradient_checkpointing_disable()

    def push_to_hub(self, *args: Any, **kwargs: Any):
        raise NotImplementedError(
            "ppo_dist does not push to the Hub: save_pretrained(directory), then upload it with "
            "huggingface_hub.upload_folder"
        )


class AutoModelForCausalLMWithValueHead(_LegacyLoading, CausalLMWithValueHead):
    """Legacy name of :class:`~ppo_dist.models.CausalLMWithValueHead`, with trl's ``from_pretrained`` options.

    ``forward`` returns ``(logits, loss, values)``; ``generate``, ``config`` (``pad_token_id``
    assignable), ``num_parameters()`` and ``save_pretrained`` behave as on a Hugging Face model.
    """


class AutoModelForSeq2SeqLMWithValueHead(_LegacyLoading, Seq2SeqLMWithValueHead):
    """Legacy name of :class:`~ppo_dist.seq2seq.Seq2SeqLMWithValueHead` (T5, BART, ...), same options.

    ``forward(input_ids, attention_mask, decoder_input_ids=...)`` returns ``(logits, loss, values)``
    over the decoder positions; ``is_encoder_decoder`` is ``True``.
    """


def create_reference_model(model, num_shared_layers: int | None = None, pattern: str | None = None):
    """A frozen copy of ``model`` in eval mode (legacy ``trl.create_reference_model``).

    With ``num_shared_layers=N`` the parameters before block ``N`` (embeddings and the first ``N``
    blocks) are frozen in ``model`` too, so both models keep the same values there, as in legacy
    trl. Blocks are found with ``pattern`` (e.g. ``"transformer.h.{layer}"``) or the known patterns.
    """
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        raise ValueError(
            "create_reference_model cannot copy a ZeRO-3 partitioned model; load the reference with from_pretrained"
        )
    ref = freeze(copy.deepcopy(model))
    if num_shared_layers is None:
        return ref
    if not isinstance(num_shared_layers, int) or num_shared_layers < 0:
        raise ValueError(f"num_shared_layers must be an integer >= 0, got {num_shared_layers!r}")
    names = [n for n, _ in model.named_parameters()]
    candidates = [pattern] if pattern is not None else LAYER_PATTERNS
    for candidate in candidates:
        block = candidate.format(layer=num_shared_layers) + "."
        first = next((i for i, n in enumerate(names) if block in n), None)
        if first is not None:
            break
    else:
        raise ValueError(
            f"create_reference_model: no parameter matches {', '.join(repr(c) for c in candidates)} for block "
            f"{num_shared_layers} of {type(model).__name__} (does it have more than {num_shared_layers} blocks? pass "
            "pattern='<prefix>.{layer}' for other architectures)"
        )
    for name in names[:first]:
        model.get_parameter(name).requires_grad_(False)
    return ref


def _single_device_map(device_map):
    """``None`` or ``{"": device}`` for one device; ``None`` for a CUDA index on a machine without CUDA."""
    if device_map is None:
        return None
    if isinstance(device_map, str) and device_map in _MULTI_DEVICE_MAPS:
        raise ValueError(
            f"device_map={device_map!r} may spread the model over several devices; ppo_dist trains one whole copy "
            "per process: pass device_map=None (each process gets its own device) or use ZeRO-3 to shard"
        )
    targets = set(device_map.values()) if isinstance(device_map, dict) else {device_map}
    if len(targets) != 1 or "disk" in targets:
        raise ValueError(
            f"device_map={device_map!r} places the model over {sorted(map(str, targets))}; ppo_dist trains one "
            "whole copy per process: pass device_map=None or one device, or use ZeRO-3 to shard"
        )
    (target,) = targets
    is_cuda = isinstance(target, int) or str(target).startswith("cuda")
    if is_cuda and not torch.cuda.is_available():
        logger.info("device_map=%r without CUDA: loading on this process's CPU", device_map)
        return None
    return {"": target}


def _check_peft_config(peft_config) -> None:
    try:
        from peft import PeftConfig, PromptLearningConfig
    except ImportError:
        raise ValueError("peft_config needs the peft package: pip install peft") from None
    if not isinstance(peft_config, PeftConfig):
        raise ValueError(f"peft_config must be a peft.PeftConfig (e.g. LoraConfig), got {type(peft_config).__name__}")
    if isinstance(peft_config, PromptLearningConfig):
        raise ValueError(f"{type(peft_config).__name__} (prompt learning) is not supported for PPO training")


def _load_adapter(load_lm, path: Path, is_trainable: bool, kwargs: dict):
    from peft import PeftConfig, PeftModel

    adapter_config = PeftConfig.from_pretrained(str(path))
    base = load_lm(str(adapter_config.base_model_name_or_path), **kwargs)
    return PeftModel.from_pretrained(base, str(path), is_trainable=is_trainable)


def _init_value_head(
    head: torch.nn.Linear,
    v_head_init_strategy: str | None = None,
    v_head_initializer_range: float | None = None,
    summary_dropout_prob: float | None = None,
) -> None:
    if v_head_init_strategy not in (None, "normal"):
        raise ValueError(f"v_head_init_strategy must be None or 'normal', got {v_head_init_strategy!r}")
    if v_head_initializer_range is not None and v_head_init_strategy != "normal":
        raise ValueError("v_head_initializer_range only applies with v_head_init_strategy='normal'")
    if v_head_init_strategy == "normal":
        with torch.no_grad():
            head.weight.normal_(mean=0.0, std=0.2 if v_head_initializer_range is None else v_head_initializer_range)
            head.bias.zero_()
    if summary_dropout_prob:
        logger.warning(
            "summary_dropout_prob=%s has no effect: ppo_dist's PPOTrainer trains with dropout disabled (PPO ratios "
            "need a deterministic policy)",
            summary_dropout_prob,
        )


def _restore_value_head(head: torch.nn.Linear, path: Path) -> None:
    """ppo_dist's ``value_head.pt`` (``models.restore_value_head``), else a legacy trl head
    (``v_head.summary.*``) in the model weights (one file or shards with an index); else the head stays
    freshly initialised, and the log says so."""
    if restore_value_head(head, path):
        return
    prefix = "v_head.summary."
    state: dict[str, torch.Tensor] = {}
    for single, index in (("model.safetensors", "model.safetensors.index.json"), ("pytorch_model.bin", None)):
        files = [path / single] if (path / single).is_file() else []
        if index and (path / index).is_file():
            weight_map = json.loads((path / index).read_text())["weight_map"]
            files = sorted({path / f for k, f in weight_map.items() if k.startswith(prefix)})
        for file in files:
            state.update(_tensors_with_prefix(file, prefix))
        if files:
            break
    if state:
        head.load_state_dict(state)
        logger.info("restored the legacy trl value head from %s", path)
    else:
        logger.info("%s has no value head: it starts freshly initialised", path)


def _tensors_with_prefix(file: Path, prefix: str) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            return {k[len(prefix) :]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    return strip_prefix(torch.load(file, map_location="cpu", weights_only=True), prefix)
