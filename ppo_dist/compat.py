"""The legacy ``trl`` PPO API (trl <= 0.11) on top of ppo_dist's engine.

Code written for ``trl.PPOTrainer`` runs with only its import changed::

    from ppo_dist import PPOConfig, PPOTrainer, AutoModelForCausalLMWithValueHead

``PPOConfig`` takes the legacy field names and maps them onto ppo_dist's :class:`~ppo_dist.config.Config`;
``PPOTrainer.step`` runs one update of the same :class:`~ppo_dist.trainer.PPOEngine` that
``train.py`` uses, so the maths, the multi-process synchronisation and the statistics are the same.

Legacy batch semantics are kept: ``batch_size`` and ``mini_batch_size`` count samples **per
process**; under ``accelerate launch`` with W processes each process passes its own
``batch_size`` samples to ``step`` and the update runs on the gathered ``batch_size * W`` samples.

Defects of the legacy trainer that are fixed here: a dataset with only a text column is tokenized
by the trainer (legacy raised ``KeyError: 'input_ids'``); ``dataloader`` yields ``steps`` batches
when ``steps`` is given, cycling and reshuffling the data (legacy stopped after one pass);
``generate`` is batched and cuts responses at EOS; ``model.num_parameters()`` exists.
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from accelerate.utils import set_seed
from transformers import PreTrainedModel

from . import distributed, tracking, zero
from .config import PRECISIONS, Config, ConfigError, validate
from .data import PromptStream, tokenize_prompts
from .engine import build_engine
from .models import CausalLMWithValueHead, prepare_tokenizer
from .rollout import Rollout, generate, left_pad, make_generation_config, right_pad

logger = logging.getLogger(__name__)

__all__ = ["PPOConfig", "PPOTrainer", "AutoModelForCausalLMWithValueHead"]


class AutoModelForCausalLMWithValueHead(CausalLMWithValueHead):
    """Legacy name of :class:`~ppo_dist.models.CausalLMWithValueHead`.

    ``from_pretrained`` takes a local directory, a hub name or an already loaded causal LM;
    ``forward`` returns ``(logits, loss, values)``; ``generate``, ``config`` (``pad_token_id``
    assignable), ``num_parameters()`` and ``save_pretrained`` behave as on a Hugging Face model.
    """


# Legacy fields that ppo_dist implements, with trl 0.11's defaults.
_LEGACY_DEFAULTS: dict[str, Any] = {
    "exp_name": "ppo_dist",
    "seed": 0,
    "log_with": None,
    "task_name": None,
    "model_name": "gpt2",
    "query_dataset": None,
    "reward_model": None,
    "remove_unused_columns": True,
    "tracker_kwargs": {},
    "accelerator_kwargs": {},
    "project_kwargs": {},
    "tracker_project_name": "trl",
    "push_to_hub_if_best_kwargs": {},
    "steps": 20000,
    "learning_rate": 1.41e-5,
    "adap_kl_ctrl": True,
    "init_kl_coef": 0.2,
    "kl_penalty": "kl",
    "target": 6.0,
    "horizon": 10000.0,
    "gamma": 1.0,
    "lam": 0.95,
    "cliprange": 0.2,
    "cliprange_value": 0.2,
    "vf_coef": 0.1,
    "batch_size": 128,
    "forward_batch_size": None,
    "mini_batch_size": 128,
    "gradient_accumulation_steps": 1,
    "world_size": None,
    "ppo_epochs": 4,
    "max_grad_norm": None,
    "optimize_cuda_cache": None,
    "optimize_device_cache": False,
    "use_score_scaling": False,
    "use_score_norm": False,
    "score_clip": None,
    "whiten_rewards": False,
    "gradient_checkpointing": False,
    # ppo_dist additions, under the legacy naming style
    "max_new_tokens": 32,
    "output_dir": "runs/ppo_trainer",
}
# Legacy fields ppo_dist accepts only at their legacy value: anything else would be silently ignored.
_UNSUPPORTED: dict[str, Any] = {
    "early_stopping": False,
    "target_kl": 1,
    "compare_steps": 1,
    "ratio_threshold": 10.0,
    "is_encoder_decoder": None,
    "is_peft_model": None,
    "backward_batch_size": None,
    "global_backward_batch_size": None,
    "global_batch_size": None,
}
_KL_PENALTY = {"kl": "k1", "k1": "k1", "k3": "k3"}
_PRECISION = {"no": "fp32", **{name: name for name in PRECISIONS}}  # accelerate's "no" and ours


class PPOConfig:
    """Legacy ``trl.PPOConfig`` field names, mapped onto ppo_dist's :class:`Config` by :meth:`to_config`.

    Unknown names fail with close-match suggestions. Legacy fields whose behaviour ppo_dist does not
    implement (``early_stopping``, ``ratio_threshold``, ...) are accepted only at their legacy
    default, so no setting is ever silently ignored.
    """

    def __init__(self, **kwargs: Any):
        known = {**_LEGACY_DEFAULTS, **_UNSUPPORTED}
        for name, value in kwargs.items():
            if name not in known:
                close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise ConfigError(f"PPOConfig has no field {name!r}.{hint}")
            if name in _UNSUPPORTED and value != _UNSUPPORTED[name]:
                raise ConfigError(
                    f"PPOConfig.{name}={value!r} is not supported by ppo_dist (only {_UNSUPPORTED[name]!r})"
                )
        if kwargs.get("kl_penalty", "kl") not in _KL_PENALTY:
            raise ConfigError(
                f"PPOConfig.kl_penalty={kwargs['kl_penalty']!r} is not supported; use one of {sorted(_KL_PENALTY)}"
            )
        for name, default in known.items():
            setattr(self, name, copy.deepcopy(kwargs.get(name, default)))
        self.steps_given = "steps" in kwargs

    def __repr__(self) -> str:
        return f"PPOConfig({', '.join(f'{k}={getattr(self, k)!r}' for k in _LEGACY_DEFAULTS)})"

    def to_config(self, world_size: int = 1) -> Config:
        """The ppo_dist config for ``world_size`` processes (legacy sizes are per process)."""
        cfg = Config()
        W = world_size
        cfg.rollout.batch_size = self.batch_size * W
        cfg.rollout.max_new_tokens = self.max_new_tokens
        cfg.rollout.forward_batch_size = self.forward_batch_size or self.batch_size
        precision = self.accelerator_kwargs.get("mixed_precision", "no")
        if precision not in _PRECISION:
            raise ConfigError(
                f"PPOConfig.accelerator_kwargs['mixed_precision']={precision!r}: use one of {sorted(_PRECISION)}"
            )
        cfg.model.dtype = _PRECISION[precision]
        p = cfg.ppo
        p.ppo_epochs, p.cliprange, p.cliprange_value, p.vf_coef = (
            self.ppo_epochs,
            self.cliprange,
            self.cliprange_value,
            self.vf_coef,
        )
        p.gamma, p.lam, p.whiten_rewards = self.gamma, self.lam, self.whiten_rewards
        p.gradient_accumulation_steps = self.gradient_accumulation_steps
        # Legacy: an optimiser step every mini_batch_size * gradient_accumulation_steps samples per process.
        p.mini_batch_size = self.mini_batch_size * self.gradient_accumulation_steps * W
        p.kl_coef, p.adaptive_kl, p.kl_target, p.kl_horizon = (
            self.init_kl_coef,
            self.adap_kl_ctrl,
            self.target,
            self.horizon,
        )
        p.kl_estimator = _KL_PENALTY[self.kl_penalty]
        cfg.optim.lr, cfg.optim.max_grad_norm = self.learning_rate, self.max_grad_norm
        cfg.model.gradient_checkpointing = bool(self.gradient_checkpointing)
        cfg.reward.normalize = bool(self.use_score_norm)
        cfg.reward.clip = self.score_clip
        cfg.train.seed, cfg.train.total_steps = self.seed, self.steps
        cfg.train.output_dir = self.project_kwargs.get("logging_dir", self.output_dir)
        trackers = (
            self.log_with if isinstance(self.log_with, (list, tuple)) else [self.log_with] if self.log_with else []
        )
        cfg.log.trackers, cfg.log.project_name = [str(t) for t in trackers], self.tracker_project_name
        if self.use_score_scaling and not self.use_score_norm:
            raise ConfigError(
                "PPOConfig.use_score_scaling without use_score_norm is not supported; set use_score_norm=True"
            )
        if self.batch_size % self.mini_batch_size:
            raise ConfigError(
                f"PPOConfig.batch_size={self.batch_size} must be divisible by mini_batch_size={self.mini_batch_size}"
            )
        return cfg


class _Dataloader:
    """Batches of ``batch_size`` samples for this process: ``steps`` of them (cycling, reshuffled
    each epoch) when ``PPOConfig.steps`` was given, else one pass over the dataset as in legacy trl."""

    def __init__(self, trainer: PPOTrainer, stream: PromptStream, prompt_column: str, collator):
        self.trainer, self.stream, self.prompt_column, self.collator = trainer, stream, prompt_column, collator
        self.position = 0  # global batches handed out so far

    def __len__(self) -> int:
        cfg = self.trainer.config
        return cfg.steps if cfg.steps_given else len(self.stream) // self.stream.batch_size

    def __iter__(self) -> Iterator[dict]:
        acc = self.trainer.accelerator
        for _ in range(len(self)):
            b = self.stream.local_batch(self.position, acc.process_index, acc.num_processes)
            self.position += 1
            rows = [
                {"input_ids": ids, self.prompt_column: text, **{k: v[i] for k, v in b.columns.items()}}
                for i, (ids, text) in enumerate(zip(b.input_ids, b.texts, strict=True))
            ]
            yield self.collator(rows)


def _default_collator(rows: list[dict]) -> dict:
    return {key: [row[key] for row in rows] for key in rows[0]}


def _text_column(dataset) -> str:
    for name in ("query", "prompt", "text"):
        if name in dataset.column_names:
            return name
    strings = [c for c in dataset.column_names if isinstance(dataset[0][c], str)]
    if len(strings) == 1:
        return strings[0]
    raise ValueError(f"cannot tell which dataset column holds the prompt text; columns: {dataset.column_names}")


class PPOTrainer:
    """Legacy ``trl.PPOTrainer``: ``generate`` / ``step`` / ``log_stats`` on ppo_dist's engine.

    Models, reference, optimizer and engine are built by :func:`ppo_dist.engine.build_engine`, the
    same wiring ``train.py`` uses; this class only translates the legacy API.
    """

    def __init__(
        self,
        config: PPOConfig,
        model=None,
        ref_model=None,
        tokenizer=None,
        dataset=None,
        optimizer=None,
        data_collator=None,
        num_shared_layers=None,
        lr_scheduler=None,
    ):
        if not isinstance(config, PPOConfig):
            raise TypeError(f"config must be a ppo_dist.PPOConfig, got {type(config).__name__}")
        if tokenizer is None:
            raise ValueError("PPOTrainer needs a tokenizer")
        if num_shared_layers is not None:
            raise ValueError(
                "num_shared_layers is not supported: the reference model is a frozen copy of the initial policy"
            )
        self.config = config
        world = distributed.world_size_from_env()
        self.cfg = cfg = config.to_config(world)
        self.plan = plan = validate(cfg, world)
        self.accelerator = acc = distributed.build_accelerator(cfg, plan)
        set_seed(config.seed, device_specific=True)  # ranks sample differently, reproducibly
        self.tokenizer = prepare_tokenizer(tokenizer)

        model = _as_value_head_model(model if model is not None else config.model_name)
        self.is_peft_model = model.is_peft_model
        if ref_model is not None:
            ref_model = _as_value_head_model(ref_model)
        elif not self.is_peft_model:  # legacy: a frozen copy of the value-head model, same parameter names
            ref_model = copy.deepcopy(model)
        self.engine = build_engine(
            cfg,
            acc,
            self.tokenizer,
            plan,
            policy=model,
            reference=ref_model,
            optimizer=optimizer,
            scheduler=lr_scheduler,
        )
        self.model, self.optimizer, self.lr_scheduler = self.engine.model, self.engine.optimizer, self.engine.scheduler
        # Legacy: ref_model is None for a LoRA policy, whose reference is itself under optional_peft_ctx().
        reference = self.engine.reference
        self.ref_model = None if self.is_peft_model or reference is None else reference.model
        self.optional_peft_ctx = self.engine.policy.unwrapped.adapter_disabled if self.is_peft_model else nullcontext
        self.gen_config = make_generation_config(cfg.rollout, self.tokenizer)

        self.dataset, self.dataloader = dataset, None
        if dataset is not None:
            self.dataloader = self.prepare_dataloader(dataset, data_collator)
        self.tracker = tracking.RunTracker(acc, cfg)
        self.tracker.start(resume_step=0, hparams=_legacy_hparams(config), init_kwargs=config.tracker_kwargs)

    @property
    def current_device(self) -> torch.device:
        return self.accelerator.device

    def prepare_dataloader(self, dataset, data_collator=None) -> _Dataloader:
        """Tokenize the text column when the dataset has no ``input_ids``; shard batches per process.

        Empty queries (no text, or no ``input_ids``) are a ``ConfigError`` naming how many and the first row.
        """
        if "input_ids" in dataset.column_names:
            ids = [torch.as_tensor(x, dtype=torch.long).reshape(-1) for x in dataset["input_ids"]]
            empty = [i for i, t in enumerate(ids) if t.numel() == 0]
            if empty:
                raise ConfigError(
                    f"{len(empty)} of {len(ids)} queries have no input_ids (first: row {empty[0]}); "
                    "every query needs tokens to generate from"
                )
            dataset = dataset.remove_columns("input_ids")
            if not any(isinstance(dataset[0][c], str) for c in dataset.column_names):
                dataset = dataset.add_column("query", self.tokenizer.batch_decode(ids))
            column = _text_column(dataset)
        else:
            column = _text_column(dataset)
            ids = tokenize_prompts(
                dataset[column], self.tokenizer, self.cfg.data.max_prompt_length, self.cfg.data.truncation
            )
        stream = PromptStream(dataset, ids, column, self.plan.batch_size, self.config.seed)
        return _Dataloader(self, stream, column, data_collator or _default_collator)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(
        self,
        query_tensor: torch.Tensor | list[torch.Tensor],
        length_sampler=None,
        batch_size: int = 4,
        return_prompt: bool = True,
        generate_ref_response: bool = False,
        remove_padding: bool = True,
        **generation_kwargs,
    ):
        """Sample responses; a list of 1-D prompts gives a list of 1-D responses (cut after EOS).

        A single 1-D (or ``(1, L)``) tensor gives a ``(1, L)`` tensor, as in legacy trl.
        ``return_prompt`` prepends the prompt; ``generate_ref_response`` also returns the
        reference model's responses. Prompts run ``batch_size`` at a time.
        """
        single = isinstance(query_tensor, torch.Tensor)
        queries = [query_tensor.reshape(-1)] if single else list(query_tensor)
        _check_id_list("query_tensor", queries)
        if length_sampler is not None:
            generation_kwargs["max_new_tokens"] = int(length_sampler())
        gen = self._generation_config(generation_kwargs)
        chunk = len(queries) if single else max(1, int(batch_size))
        acc = self.accelerator
        # Under bf16/fp16 mixed precision, autocast casts the weights once per call (its cache lives
        # as long as the context), so every decoding step reads half-width weights.
        with (
            zero.gathered_for_generation(acc, self.model, self.cfg.rollout.gather_for_generation) as policy,
            acc.autocast(),
        ):
            policy.eval()
            out = self._as_lists(generate(policy, queries, self.tokenizer, gen, chunk), return_prompt)
        ref = None
        if generate_ref_response:
            reference = self.engine.reference
            if reference is None:
                raise ValueError("generate_ref_response=True needs a reference model, and init_kl_coef=0 builds none")
            with reference.context(), acc.autocast():
                ref = self._as_lists(generate(reference.model, queries, self.tokenizer, gen, chunk), return_prompt)
        if single:
            out = out[0].unsqueeze(0)
            ref = ref[0].unsqueeze(0) if ref is not None else None
        return (out, ref) if generate_ref_response else out

    def _generation_config(self, kwargs: dict):
        gen = copy.deepcopy(self.gen_config)
        kwargs = dict(kwargs)
        if "top_k" in kwargs and kwargs["top_k"] is not None:
            kwargs["top_k"] = int(kwargs["top_k"])  # legacy code passes top_k=0.0
        if kwargs.get("min_length", 0) is not None and kwargs.get("min_length", 0) < 0:
            kwargs.pop("min_length")  # legacy "min_length": -1 meant "no minimum"
        if "max_length" in kwargs and "max_new_tokens" not in kwargs:
            gen.max_new_tokens = None
        unused = gen.update(**kwargs)
        if unused:
            raise ValueError(f"unknown generation arguments: {sorted(unused)}")
        return gen

    @staticmethod
    def _as_lists(rollout: Rollout, return_prompt: bool) -> list[torch.Tensor]:
        """Per-sample 1-D tensors: the response up to and including EOS, after its prompt if asked."""
        out = []
        for q, qm, r, rm in zip(
            rollout.queries, rollout.query_mask, rollout.responses, rollout.response_mask, strict=True
        ):
            response = r[: int(rm.sum())]
            out.append(torch.cat([q[qm.bool()], response]) if return_prompt else response)
        return out

    # ------------------------------------------------------------------ the update

    def step(self, queries: list[torch.Tensor], responses: list[torch.Tensor], scores: list) -> dict[str, Any]:
        """One PPO update on this process's ``batch_size`` (query, response, score) triples.

        Under several processes every process calls ``step`` with its own batch; the update and the
        returned statistics are computed on all processes' samples together.
        """
        error = score_t = None
        try:
            score_t = self._validate_step_inputs(queries, responses, scores)
        except ValueError as e:
            error = e
        failures = distributed.failures_everywhere(self.accelerator, error)
        if failures is not None:  # one bad batch must not hang the other processes in the engine's collectives
            if error is not None:
                raise error
            ranks = ", ".join(str(r) for r, m in enumerate(failures) if m)
            raise ValueError(f"step: process(es) {ranks} passed invalid inputs: {'; '.join(m for m in failures if m)}")

        t0 = time.perf_counter()
        device, pad = self.accelerator.device, self.tokenizer.pad_token_id
        q, qm = left_pad([t.long().cpu() for t in queries], pad)
        r, rm = right_pad([t.long().cpu() for t in responses], pad)
        rollout = Rollout(q.to(device), qm.to(device), r.to(device), rm.to(device))
        stats: dict[str, Any] = self.engine.step(rollout, score_t.to(device))
        stats["time/ppo/total"] = time.perf_counter() - t0
        return stats

    def _validate_step_inputs(self, queries, responses, scores) -> torch.Tensor:
        n = self.config.batch_size
        for name, value in (("queries", queries), ("responses", responses), ("scores", scores)):
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{name} must be a list, got {type(value).__name__}")
        if not len(queries) == len(responses) == len(scores):
            raise ValueError(
                "queries, responses and scores must have the same length, got "
                f"{len(queries)}, {len(responses)}, {len(scores)}"
            )
        if len(queries) != n:
            raise ValueError(
                f"step got {len(queries)} samples but PPOConfig.batch_size={n} (samples per process and step)"
            )
        _check_id_list("queries", queries)
        _check_id_list("responses", responses)
        if any(len(r) == 0 for r in responses):
            raise ValueError("responses must not be empty: an empty response has no token to learn from")
        return _scores_tensor(scores)

    def log_stats(
        self, stats: dict, batch: dict, rewards: Sequence, columns_to_log: Sequence[str] = ("query", "response")
    ) -> None:
        """Write ``stats`` (and a table of this process's samples, from the main process) to the trackers."""
        scalars = {k: float(v) for k, v in stats.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        table = None
        if all(c in batch for c in columns_to_log):
            table = {c: list(batch[c]) for c in columns_to_log} | {"reward": [_scalar(x) for x in rewards]}
        self.tracker.log(self.engine.global_step, scalars, table=table)

    def save_pretrained(self, save_directory: str) -> None:
        """Save the policy (with its value head; LoRA: merged, plus the adapter) and the tokenizer."""
        self.engine.save_pretrained(save_directory, self.tokenizer)

    def end(self) -> None:
        """Close trackers and the process group (call once at the end of a multi-process script)."""
        distributed.shutdown(self.accelerator)


def _as_value_head_model(model) -> CausalLMWithValueHead:
    if isinstance(model, CausalLMWithValueHead):
        return model
    if isinstance(model, (str, PreTrainedModel)):
        return AutoModelForCausalLMWithValueHead.from_pretrained(model)
    raise TypeError(
        f"model must be an AutoModelForCausalLMWithValueHead, a causal LM or a path, got {type(model).__name__}"
    )


def _check_id_list(name: str, seqs: Sequence) -> None:
    for i, t in enumerate(seqs):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}[{i}] must be a torch.Tensor of token ids, got {type(t).__name__}")
        if t.dim() != 1 or t.is_floating_point():
            raise ValueError(
                f"{name}[{i}] must be a 1-D integer tensor of token ids, got shape {tuple(t.shape)} dtype {t.dtype}"
            )


def _scalar(x) -> float:
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"each score must be a scalar, got a tensor of shape {tuple(x.shape)}")
        return float(x.item())
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x)
    raise ValueError(f"each score must be a scalar tensor or a number, got {type(x).__name__}")


def _scores_tensor(scores: Sequence) -> torch.Tensor:
    values = []
    for i, s in enumerate(scores):
        try:
            v = _scalar(s)
        except ValueError as e:
            raise ValueError(f"scores[{i}]: {e}") from None
        if not math.isfinite(v):
            raise ValueError(f"scores[{i}] is {v}: rewards must be finite")
        values.append(v)
    return torch.tensor(values, dtype=torch.float32)


def _legacy_hparams(config: PPOConfig) -> dict:
    """The legacy config as the trackers' hyperparameters (legacy trl logged ``config.to_dict()``)."""
    return {k: getattr(config, k) for k in _LEGACY_DEFAULTS}
