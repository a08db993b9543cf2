"""What every TRL-trained stage shares: our config -> a TRL config and trainer, and the service's guarantees.

A stage module subclasses :class:`StageRunner` with its TRL classes, its model and its data
preparation. Around the TRL trainer (a ``transformers.Trainer``) the runner provides:

* **configuration**: model / data / optim / train / log / checkpoint keep their PPO meaning and map
  onto ``TrainingArguments`` (:meth:`StageRunner.training_args`); ``<stage>.batch_size`` is global and
  split over processes and accumulation steps once, before anything loads (``config.stages.validate_stage``).
* **data**: ``data.path`` / ``data.dataset_name`` or the embedded default (:mod:`ppo_dist.data.pipeline`);
  the columns the stage needs are checked up front; ``<stage>.eval_fraction`` is held out (seeded) and
  evaluated at the end (and every ``<stage>.eval_every`` steps).
* **checkpoints**: the Trainer's ``<output_dir>/checkpoints/checkpoint-N/`` (model, optimizer,
  scheduler, every process's RNG state, trainer state) every ``checkpoint.every`` steps and at the end,
  the newest ``checkpoint.keep`` kept. The Trainer writes in place, so a checkpoint only counts once
  every process has finished writing it and the main process has added a ``COMPLETE`` marker;
  ``checkpoint.resume auto`` continues from the newest complete one and unmarked leftovers of a
  killed run are deleted. The data order continues where the checkpoint left it (the Trainer skips
  the batches already seen), so a resumed run ends at the same step as an uninterrupted one.
* **preemption**: SIGUSR1 / SIGTERM / Ctrl-C -> at the end of the current optimiser step every process
  agrees to stop, a checkpoint is saved and the process exits with status 75 (the SLURM templates requeue).
* **TensorBoard** under ``<output_dir>/<log.project_name>/``, as for PPO; a resumed run drops what
  the interrupted one logged after its checkpoint.
* **outputs**: ``final_model/`` (model + tokenizer via ``save_pretrained``), ``eval_results.json``
  and one summary line.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path

from accelerate import PartialState
from transformers import TrainerCallback, TrainerState, set_seed
from transformers.trainer import TRAINER_STATE_NAME

from ..config import LR_SCHEDULERS, STAGES, Config, ConfigError, validate
from ..data import load_dataset_source
from ..models import causal_lm, disable_dropout, load_tokenizer
from ..runtime import distributed, tracking, zero
from ..runtime.checkpoint import (
    COMPLETE,
    CheckpointError,
    check_writable,
    complete_checkpoints,
    stop_together_on,
)
from ..runtime.guards import Preempted, StopSignals

logger = logging.getLogger(__name__)

_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


def split_held_out(dataset, fraction: float, seed: int):
    """(train, held-out): ``ceil(fraction * n)`` examples held out by a seeded shuffle; held-out None for 0."""
    if fraction == 0:
        return dataset, None
    split = dataset.train_test_split(test_size=math.ceil(fraction * len(dataset)), seed=seed)
    return split["train"], split["test"]


class StopOnSignal(TrainerCallback):
    """SIGUSR1/SIGTERM/SIGINT: stop at the end of the current optimiser step, on every process together.

    ``any_process(flag)`` reduces the flag over processes once per step, so processes that got the
    signal at slightly different times still stop after the same step (and save the same checkpoint).
    """

    def __init__(self, any_process):
        self.any_process = any_process
        self.signals = StopSignals()  # the PPO trainer's handlers
        self.stopped = False

    def install(self) -> None:
        self.signals.install()

    def on_train_begin(self, args, state, control, **kwargs):
        # Printed once the handlers are in place: launch scripts and tests may signal from here on.
        print(
            f"[ppo_dist] process {args.process_index} (pid {os.getpid()}): training from step {state.global_step} "
            f"to {state.max_steps}",
            flush=True,
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self.any_process(self.signals.requested):
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True


class MarkComplete(TrainerCallback):
    """Marks a checkpoint complete once every process has returned from writing it, then deletes
    complete checkpoints beyond the newest ``keep`` (the HF Trainer's own rotation runs before the
    marker exists, so it is off: it could leave no complete checkpoint while one is being written)."""

    def __init__(self, keep: int):
        self.keep = keep

    def on_save(self, args, state, control, **kwargs):
        processes = PartialState()
        processes.wait_for_everyone()
        if state.is_world_process_zero:
            (Path(args.output_dir) / f"checkpoint-{state.global_step}" / COMPLETE).write_text(str(state.global_step))
            for _, old in complete_checkpoints(Path(args.output_dir), _CHECKPOINT_DIR)[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        processes.wait_for_everyone()


def agreed_checkpoints(trainer_class: type) -> type:
    """``trainer_class`` whose checkpoint writes fail on every process together: one process's error
    (a full disk, a permission) becomes the same :class:`CheckpointError` on all, instead of the others
    waiting in the next collective, and the half-written checkpoint (never marked complete) is removed."""

    class AgreedCheckpoints(trainer_class):
        def _save_checkpoint(self, model, trial):
            error = None
            try:
                super()._save_checkpoint(model, trial)
            except Exception as e:  # noqa: BLE001 - OSError, or a serializer's own error type
                error = e
            ckpt = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            what = f"writing stage checkpoint {ckpt}"
            stop_together_on(self.accelerator, error, what, ckpt, ckpt.parent, _CHECKPOINT_DIR)

    AgreedCheckpoints.__name__ = AgreedCheckpoints.__qualname__ = trainer_class.__name__
    return AgreedCheckpoints


class StageRunner:
    """Builds a TRL trainer from a :class:`Config` and runs it with the guarantees in the module doc.

    Subclasses name their TRL classes (``trl_classes``: config, trainer) and define ``stage_args``
    (their stage-specific fields), ``build_model``, and optionally ``embedded_data``, ``check_format``,
    ``prepare``, ``trainer_kwargs`` and ``headline`` (the metrics of the summary line).
    """

    headline: tuple[str, ...] = ("loss",)
    trl_classes: tuple[str, str]  # names in ``trl``: the stage's config and trainer classes

    def __init__(self, cfg: Config):
        self.plan = validate(cfg, distributed.world_size_from_env())  # before any model is loaded
        tracking.check_trackers(cfg.log.trackers)
        # TRL gathers metrics outside a dataloader at every step; accelerate logs that each time at INFO.
        logging.getLogger("accelerate.accelerator").setLevel(logging.WARNING)
        self.cfg, self.name, self.section = cfg, cfg.stage, getattr(cfg, cfg.stage)
        self.out = Path(cfg.train.output_dir)
        check_writable(self.out)
        self.args = self.training_args()  # also sets up the process group
        if not cfg.log.progress_bar:  # the Trainer's own bar follows disable_tqdm; these are datasets'/transformers'
            import datasets
            import transformers

            datasets.disable_progress_bars()
            transformers.utils.logging.disable_progress_bar()
        if self.args.device.type == "cpu" and cfg.train.cpu_malloc_reuse:
            distributed.reuse_freed_cpu_memory()
        self.tokenizer = load_tokenizer(cfg.model)
        train_data, held_out = self.datasets()
        set_seed(cfg.train.seed)  # the embedded model and any new head are seeded
        model = self.build_model()
        if cfg.model.disable_dropout:
            disable_dropout(model)
        self.stopper = StopOnSignal(lambda flag: distributed.any_process(self.trainer.accelerator, flag))
        self.trainer = self.trainer_class()(
            model=model,
            args=self.args,
            train_dataset=train_data,
            eval_dataset=held_out,
            processing_class=self.tokenizer,
            callbacks=[self.stopper, MarkComplete(cfg.checkpoint.keep)],
            **self.trainer_kwargs(model),
        )
        self.held_out_size = 0 if held_out is None else len(held_out)
        acc = self.trainer.accelerator
        logger.info(
            "stage %s: %s on %d process(es), device %s, ZeRO stage %d",
            self.name,
            acc.distributed_type.value,
            acc.num_processes,
            acc.device,
            zero.zero_stage(acc),
        )

    # ------------------------------------------------------------------ what a stage defines

    def config_class(self) -> type:
        return getattr(importlib.import_module("trl"), self.trl_classes[0])

    def trainer_class(self) -> type:
        return agreed_checkpoints(getattr(importlib.import_module("trl"), self.trl_classes[1]))

    def stage_args(self) -> dict:
        """Fields of the TRL config that only this stage has."""
        return {}

    def build_model(self):
        raise NotImplementedError

    def embedded_data(self) -> dict[str, list]:
        raise NotImplementedError

    def check_format(self, dataset, columns: tuple[str, ...]) -> None:
        """Checks of the data's format; ``columns`` is the matched column set. Conversations (lists of
        messages) need a tokenizer with a chat template."""
        conversational = [c for c in columns if isinstance(dataset[0][c], list)]
        if conversational and not getattr(self.tokenizer, "chat_template", None):
            m = self.cfg.model
            source = m.tokenizer_name_or_path or m.name_or_path
            raise ConfigError(
                f"data: {', '.join(conversational)} {'holds' if len(conversational) == 1 else 'hold'} conversations, "
                "which need a tokenizer with a chat template; "
                f"{f'the tokenizer of {source!r}' if source else 'the embedded tokenizer'} has none. Use plain-text "
                "columns or a chat model's tokenizer (model.tokenizer_name_or_path)"
            )

    def prepare(self, dataset):
        """The dataset as handed to the TRL trainer (default: unchanged)."""
        return dataset

    def trainer_kwargs(self, model) -> dict:
        return {}

    # ------------------------------------------------------------------ shared building blocks

    def training_args(self):
        """The TRL config: our shared settings mapped onto ``TrainingArguments`` plus ``stage_args``."""
        cfg, plan, s = self.cfg, self.plan, self.section
        o, t, lg, ck = cfg.optim, cfg.train, cfg.log, cfg.checkpoint
        import torch

        kwargs = dict(
            output_dir=str(self.out / "checkpoints"),
            max_steps=t.total_steps,
            per_device_train_batch_size=plan.local_micro_batch_size,
            per_device_eval_batch_size=plan.local_micro_batch_size,
            gradient_accumulation_steps=plan.gradient_accumulation_steps,
            learning_rate=o.lr,
            weight_decay=o.weight_decay,
            adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2,
            adam_epsilon=o.adam_eps,
            max_grad_norm=o.max_grad_norm or 0.0,
            lr_scheduler_type=LR_SCHEDULERS[o.lr_scheduler],
            warmup_steps=o.warmup_steps,
            seed=t.seed,
            data_seed=t.seed,
            bf16=cfg.model.dtype == "bf16",
            fp16=cfg.model.dtype == "fp16",
            max_length=s.max_length,
            logging_steps=lg.log_every,
            logging_first_step=True,
            report_to=[name for name in lg.trackers if name != "tensorboard"] or "none",  # tensorboard: ours
            run_name=lg.project_name,
            disable_tqdm=not lg.progress_bar,
            save_strategy="steps",
            save_steps=ck.every or t.total_steps,
            save_total_limit=None,  # MarkComplete rotates, after marking the new checkpoint complete
            eval_strategy="steps" if s.eval_fraction > 0 else "no",
            eval_steps=s.eval_every or t.total_steps,
            ddp_backend="gloo" if plan.world_size > 1 and not torch.cuda.is_available() else None,
            ddp_timeout=t.collective_timeout,
            trust_remote_code=cfg.model.trust_remote_code,
        )
        config_class = self.config_class()
        # TRL turns activation checkpointing on by default: here model.gradient_checkpointing decides, as for
        # PPO (transformers 5 renamed the field).
        names = {f.name for f in dataclasses.fields(config_class)}
        checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
        kwargs[checkpointing] = cfg.model.gradient_checkpointing
        kwargs.update(self.stage_args())
        try:
            return config_class(**kwargs)
        except ValueError as e:  # TrainingArguments' own consistency checks
            raise ConfigError(f"stage {self.name}: {str(e).strip().splitlines()[0]}") from None

    def datasets(self):
        """(train, held-out or None) after the column check; held-out is ``eval_fraction`` of it, seeded."""
        import datasets

        d = self.cfg.data
        ds = load_dataset_source(d)
        source = f"data.path {d.path!r}" if d.path else f"data.dataset_name {d.dataset_name!r}"
        if ds is None:
            ds, source = datasets.Dataset.from_dict(self.embedded_data()), "the embedded default"
        accepted = STAGES[self.name].columns
        columns = next((c for c in accepted if set(c) <= set(ds.column_names)), None)
        if columns is None:
            have = ", ".join(ds.column_names) or "no columns"
            if len(accepted) == 1:
                missing = ", ".join(c for c in accepted[0] if c not in ds.column_names)
                raise ConfigError(
                    f"data: stage {self.name} needs the columns {', '.join(accepted[0])}; {source} has {have} "
                    f"(missing: {missing})"
                )
            options = " or ".join(" + ".join(c) for c in accepted)
            raise ConfigError(f"data: stage {self.name} needs the columns {options}; {source} has {have}")
        if len(ds) == 0:
            raise ConfigError(f"data: {source} is empty")
        self.check_format(ds, columns)
        ds = ds.select_columns(list(columns))
        fraction = self.section.eval_fraction
        if fraction > 0 and math.ceil(fraction * len(ds)) >= len(ds):
            raise ConfigError(f"{self.name}.eval_fraction={fraction} of {len(ds)} examples leaves nothing to train on")
        train, held_out = split_held_out(ds, fraction, self.cfg.train.seed)
        return self.prepare(train), None if held_out is None else self.prepare(held_out)

    def causal_lm(self, name_or_path: str | None):
        """A causal LM from ``name_or_path``, or the embedded tiny GPT-2 when empty."""
        return causal_lm(self.cfg.model, self.tokenizer, name_or_path)

    # ------------------------------------------------------------------ run

    def _resume_path(self) -> Path | None:
        root, resume = Path(self.args.output_dir), self.cfg.checkpoint.resume
        state = PartialState()
        if state.is_main_process and root.is_dir():
            for child in root.iterdir():  # left by a run killed while writing; never resumable
                if _CHECKPOINT_DIR.match(child.name) and not (child / COMPLETE).is_file():
                    logger.warning("removing incomplete checkpoint %s", child)
                    shutil.rmtree(child, ignore_errors=True)
        state.wait_for_everyone()
        if not resume:
            return None
        if resume == "auto":
            found = complete_checkpoints(root, _CHECKPOINT_DIR)
            if not found:
                logger.info("checkpoint.resume=auto: no checkpoint in %s, starting fresh", root)
                return None
            return found[-1][1]
        path = Path(resume)
        if not (path / COMPLETE).is_file():
            raise CheckpointError(
                f"checkpoint.resume={resume!r} is not a complete checkpoint directory (no {COMPLETE} marker)"
            )
        return path

    def _tensorboard(self, resume_step: int) -> None:
        if "tensorboard" not in self.cfg.log.trackers or not PartialState().is_main_process:
            return
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        # Steps after the checkpoint that an interrupted run logged are dropped by TensorBoard.
        writer = SummaryWriter(
            str(self.out / self.cfg.log.project_name), purge_step=resume_step + 1 if resume_step else None
        )
        self.trainer.add_callback(TensorBoardCallback(tb_writer=writer))

    def train(self) -> dict:
        resume = self._resume_path()
        resume_step = int((resume / COMPLETE).read_text()) if resume else 0
        if resume:
            logger.info("resuming from %s (step %d)", resume, resume_step)
        final = self.out / "final_model"
        if resume_step >= self.cfg.train.total_steps:
            # Stopped after the last checkpoint (e.g. while saving the final model). The Trainer would
            # still take one more step when resumed there, so the checkpoint is the result.
            logger.info(
                "checkpoint %s is at step %d of train.total_steps=%d: nothing left to train",
                resume,
                resume_step,
                self.cfg.train.total_steps,
            )
            self.trainer.state = TrainerState.load_from_json(str(resume / TRAINER_STATE_NAME))
            if self.cfg.train.save_final_model:
                self._save_from_checkpoint(resume, final)
        else:
            self._tensorboard(resume_step)
            self.stopper.install()
            self.trainer.train(resume_from_checkpoint=str(resume) if resume else None)
            state = self.trainer.state
            if self.stopper.stopped and state.global_step < state.max_steps:
                logger.warning("stopping on signal after step %d; checkpoint saved", state.global_step)
                raise Preempted(state.global_step)
            if self.cfg.train.save_final_model:
                self.trainer.save_model(str(final))
        results = self.results()
        if PartialState().is_main_process:
            (self.out / "eval_results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
            print(self.summary_line(results), flush=True)
        return results

    def _save_from_checkpoint(self, checkpoint: Path, final: Path) -> None:
        """``final_model/`` from a checkpoint's model weights (written there by the Trainer's save_model)."""
        model_class = type(self.trainer.accelerator.unwrap_model(self.trainer.model))
        try:  # on every process, so that all fail together
            model = model_class.from_pretrained(str(checkpoint))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot load the model weights of {checkpoint}: {e}") from None
        processes = PartialState()
        if processes.is_main_process:
            model.save_pretrained(str(final))
            self.tokenizer.save_pretrained(str(final))
        processes.wait_for_everyone()

    def results(self) -> dict:
        """Headline metrics: first and last logged training values and the last held-out evaluation."""
        history = self.trainer.state.log_history
        logged = [h for h in history if "loss" in h and "eval_loss" not in h]
        k = min(5, max(1, len(logged) // 2))

        def mean(rows, key):
            values = [r[key] for r in rows if key in r]
            return sum(values) / len(values) if values else float("nan")

        evals = [h for h in history if "eval_loss" in h]
        held_out = {key[5:]: v for key, v in evals[-1].items() if key.startswith("eval_")} if evals else {}
        return {
            "stage": self.name,
            "global_step": self.trainer.state.global_step,
            "logs_averaged": k,
            "train_first": {m: mean(logged[:k], m) for m in self.headline},
            "train_last": {m: mean(logged[-k:], m) for m in self.headline},
            "held_out_examples": self.held_out_size,
            "held_out": held_out,
        }

    def summary_line(self, r: dict) -> str:
        k = r["logs_averaged"]
        parts = [
            f"{m} first {k} logs {r['train_first'][m]:.3f} -> last {k} logs {r['train_last'][m]:.3f}"
            for m in self.headline
        ]
        line = f"{self.name}: {r['global_step']} steps; " + ", ".join(parts)
        if r["held_out"]:
            held = ", ".join(f"{m} {r['held_out'][m]:.3f}" for m in self.headline if m in r["held_out"])
            line += f"; held-out ({r['held_out_examples']} examples): {held}"
        return line

    def close(self) -> None:
        distributed.shutdown(self.trainer.accelerator)
