"""The legacy ``trl`` PPO API (trl <= 0.11) on top of ppo_dist's learner.

Code written for ``trl.PPOTrainer`` runs with only its imports changed::

    from ppo_dist import PPOConfig, PPOTrainer, AutoModelForCausalLMWithValueHead, set_seed
    from ppo_dist.core import LengthSampler

The legacy surface lives beside this module: ``PPOConfig`` in :mod:`.config` (mapped onto
ppo_dist's :class:`~ppo_dist.config.Config`), the value-head model classes and
``create_reference_model`` in :mod:`.models`, ``trl.core``'s helpers in :mod:`.core`.
``PPOTrainer.step`` runs one update of the same :class:`~ppo_dist.rl.learner.Learner` that
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
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from accelerate.utils import set_seed
from transformers import PreTrainedModel

from ..config import ConfigError, validate
from ..data import PromptStream, tokenize_prompts
from ..models import CausalLMWithValueHead, prepare_tokenizer
from ..rl.engines import Sampling
from ..rl.engines.hf import generate, generation_config
from ..rl.learner import build_learner
from ..rl.rollout import Rollout, left_pad, right_pad
from ..runtime import distributed, tracking, zero
from .config import PPOConfig
from .models import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead, create_reference_model
from .seq2seq import Seq2SeqLMWithValueHead

logger = logging.getLogger(__name__)

__all__ = [
    "PPOConfig",
    "PPOTrainer",
    "AutoModelForCausalLMWithValueHead",
    "AutoModelForSeq2SeqLMWithValueHead",
    "create_reference_model",
]


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


def _text_column(dataset, required: bool = True) -> str | None:
    for name in ("query", "prompt", "text"):
        if name in dataset.column_names:
            return name
    strings = [c for c in dataset.column_names if isinstance(dataset[0][c], str)]
    if len(strings) == 1:
        return strings[0]
    if not required:
        return None
    raise ValueError(f"cannot tell which dataset column holds the prompt text; columns: {dataset.column_names}")


class PPOTrainer:
    """Legacy ``trl.PPOTrainer``: ``generate`` / ``step`` / ``log_stats`` on ppo_dist's learner.

    Models, reference, optimizer and learner are built by :func:`ppo_dist.rl.learner.build_learner`,
    the same wiring ``train.py`` uses; this class only translates the legacy API.
    """

    # trl 0.11.4's signature, argument for argument
    def __init__(self, config: PPOConfig, model=None, ref_model=None, tokenizer=None, dataset=None, optimizer=None,
                 data_collator=None, num_shared_layers=None, lr_scheduler=None):  # fmt: skip
        if not isinstance(config, PPOConfig):
            raise TypeError(f"config must be a ppo_dist.PPOConfig, got {type(config).__name__}")
        if tokenizer is None:
            raise ValueError("PPOTrainer needs a tokenizer")
        if num_shared_layers is not None and ref_model is not None:
            raise ValueError(
                "num_shared_layers applies only without ref_model (the reference is then copied from model)"
            )
        if lr_scheduler is not None and optimizer is None:
            raise ValueError("lr_scheduler was given without the optimizer it schedules: pass optimizer= too")
        self.config = config
        world = distributed.world_size_from_env()
        self.cfg = cfg = config.to_config(world)
        self.plan = plan = validate(cfg, world)
        self.accelerator = acc = distributed.build_accelerator(cfg, plan)
        set_seed(config.seed, device_specific=True)  # ranks sample differently, reproducibly
        self.tokenizer = prepare_tokenizer(tokenizer)

        model = _as_value_head_model(model if model is not None else config.model_name)
        self.is_peft_model = model.is_peft_model
        config.fill_runtime_fields(world, model.is_encoder_decoder, self.is_peft_model)
        if ref_model is not None:
            ref_model = _as_value_head_model(ref_model)
        elif num_shared_layers is not None:
            ref_model = create_reference_model(model, num_shared_layers)  # also freezes model's first layers
        elif not self.is_peft_model:  # legacy: a frozen copy of the value-head model, same parameter names
            ref_model = copy.deepcopy(model)
        # A user's optimizer and scheduler keep legacy semantics: the scheduler steps once per step() call
        # and the update reads the optimiser's current learning rate.
        self._user_scheduler = lr_scheduler
        self.learner = build_learner(
            cfg, acc, self.tokenizer, plan, policy=model, reference=ref_model, optimizer=optimizer,
            scheduler=_CurrentLR(optimizer) if optimizer is not None else None,
        )  # fmt: skip
        self.model, self.optimizer = self.learner.policy.model, self.learner.update.optimizer
        self.lr_scheduler = lr_scheduler if optimizer is not None else self.learner.update.scheduler
        # Legacy: ref_model is None for a LoRA policy, whose reference is itself under optional_peft_ctx().
        reference = self.learner.reference
        self.ref_model = None if self.is_peft_model or reference is None else reference.model
        self.optional_peft_ctx = self.learner.policy.unwrapped.adapter_disabled if self.is_peft_model else nullcontext
        self.gen_config = generation_config(Sampling.from_config(cfg.rollout, self.tokenizer))

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
            column = _text_column(dataset, required=False)
            if column is None:  # the tokens are the prompt: its text for logging is their decoding
                column = "query"
                dataset = dataset.add_column(column, self.tokenizer.batch_decode(ids))
        else:
            column = _text_column(dataset)
            # Legacy had no prompt length limit (it never tokenized): prompts are kept whole.
            ids = tokenize_prompts(dataset[column], self.tokenizer, max_length=sys.maxsize, truncation="error")
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
        if single and query_tensor.dim() > 1 and query_tensor.shape[0] != 1:
            raise ValueError(
                f"query_tensor must be a 1-D tensor (seq_len) or a list of them, as in legacy trl; got a tensor of "
                f"shape {tuple(query_tensor.shape)} (pass list(query_tensor) for a batch)"
            )
        queries = [query_tensor.reshape(-1)] if single else list(query_tensor)
        _check_id_list("query_tensor", queries)
        if single and length_sampler is not None:  # legacy: one draw, shared with the reference response
            generation_kwargs["max_new_tokens"] = int(length_sampler())
            length_sampler = None
        chunk = len(queries) if single else max(1, int(batch_size))
        # Legacy: an encoder-decoder returns the decoder's tokens only, whatever return_prompt says.
        return_prompt = return_prompt and not self.learner.policy.unwrapped.is_encoder_decoder
        acc = self.accelerator
        # Under bf16/fp16 mixed precision, autocast casts the weights once per call (its cache lives
        # as long as the context), so every decoding step reads half-width weights.
        with (
            zero.gathered_for_generation(acc, self.model, self.cfg.rollout.gather_for_generation) as policy,
            acc.autocast(),
        ):
            policy.eval()
            out = self._generate_in_chunks(policy, queries, chunk, length_sampler, generation_kwargs, return_prompt)
        ref = None
        if generate_ref_response:
            reference = self.learner.reference
            if reference is None:
                raise ValueError("generate_ref_response=True needs a reference model, and init_kl_coef=0 builds none")
            # The adapter-disabled reference is the prepared (DDP-wrapped) policy: generate on the module.
            with reference.context(), acc.autocast():
                ref_model = distributed.unwrap(acc, reference.model)
                ref = self._generate_in_chunks(
                    ref_model, queries, chunk, length_sampler, generation_kwargs, return_prompt
                )
        if single:
            out = out[0].unsqueeze(0)
            ref = ref[0].unsqueeze(0) if ref is not None else None
        return (out, ref) if generate_ref_response else out

    def _generate_in_chunks(self, model, queries, chunk, length_sampler, generation_kwargs, return_prompt):
        """Legacy ``_generate_batched``: ``chunk`` prompts at a time, ``max_new_tokens`` drawn from
        ``length_sampler`` for every chunk (so the sampler's draws follow legacy's)."""
        out = []
        for start in range(0, len(queries), chunk):
            if length_sampler is not None:
                generation_kwargs["max_new_tokens"] = int(length_sampler())
            gen = self._generation_config(generation_kwargs)
            rollout = generate(model, queries[start : start + chunk], self.tokenizer, gen, chunk)
            out += self._as_lists(rollout, return_prompt)
        return out

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
        if failures is not None:  # one bad batch must not hang the other processes in the learner's collectives
            if error is not None:
                raise error
            ranks = ", ".join(str(r) for r, m in enumerate(failures) if m)
            raise ValueError(f"step: process(es) {ranks} passed invalid inputs: {'; '.join(m for m in failures if m)}")

        t0 = time.perf_counter()
        device, pad = self.accelerator.device, self.tokenizer.pad_token_id
        q, qm = left_pad([t.long().cpu() for t in queries], pad)
        r, rm = right_pad([t.long().cpu() for t in responses], pad)
        rollout = Rollout(q.to(device), qm.to(device), r.to(device), rm.to(device))
        stats: dict[str, Any] = self.learner.step(rollout, score_t.to(device))
        if self._user_scheduler is not None:
            self._user_scheduler.step()
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
        missing = [c for c in columns_to_log if c not in batch]
        if missing:  # checked on every process: they all raise, none waits in a collective
            raise ValueError(f"log_stats: columns_to_log {missing} are not in the batch (keys: {sorted(batch)})")
        scalars = {k: float(v) for k, v in stats.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        table = {c: [_cell(v) for v in batch[c]] for c in columns_to_log} | {"reward": [_scalar(x) for x in rewards]}
        self.tracker.log(self.learner.global_step, scalars, table=table, table_tag="game_log")

    def save_pretrained(self, save_directory: str) -> None:
        """Save the policy (with its value head; LoRA: merged, plus the adapter) and the tokenizer."""
        self.learner.save_pretrained(save_directory, self.tokenizer)

    def end(self) -> None:
        """Close trackers and the process group (call once at the end of a multi-process script)."""
        distributed.shutdown(self.accelerator)


def _as_value_head_model(model) -> CausalLMWithValueHead | Seq2SeqLMWithValueHead:
    if isinstance(model, (CausalLMWithValueHead, Seq2SeqLMWithValueHead)):
        return model
    if isinstance(model, PreTrainedModel) and getattr(model.config, "is_encoder_decoder", False):
        return AutoModelForSeq2SeqLMWithValueHead.from_pretrained(model)
    if isinstance(model, (str, PreTrainedModel)):
        return AutoModelForCausalLMWithValueHead.from_pretrained(model)
    raise TypeError(
        "model must be an AutoModelForCausalLMWithValueHead, an AutoModelForSeq2SeqLMWithValueHead, a Hugging Face "
        f"LM or a path, got {type(model).__name__}"
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


def _cell(value):
    """One game_log table cell: scalar tensors as numbers."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        return round(float(value), 4)
    return value


def _legacy_hparams(config: PPOConfig) -> dict:
    """The legacy config as the trackers' hyperparameters (legacy trl logged ``config.to_dict()``)."""
    return {k: v for k, v in config.to_dict().items() if v is not None}


class _CurrentLR:
    """The update's view of a user's schedule: the optimiser's current lr; the user's scheduler is
    stepped by PPOTrainer.step, once per call, as in legacy trl."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def step(self) -> None:
        pass

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]
