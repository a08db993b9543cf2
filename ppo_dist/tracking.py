"""Experiment tracking: scalars through ``accelerator.log``, plus TensorBoard extras.

Every value logged here is already global: the engine computes statistics on the gathered batch,
and the one per-step reduction (:func:`step_flags`) also carries the peak memory of every process.
Only the main process writes (accelerate creates trackers there alone).

TensorBoard gets, besides the scalars: histograms of rewards and response lengths, a table of
sample prompts/completions/rewards every ``log.samples_every`` steps, and the flattened config as
hyperparameters, tied to the headline metrics so the HParams dashboard compares runs. They go
through the same writer (no second event file). A resumed run passes ``purge_step`` so TensorBoard
drops events an interrupted run wrote after its last checkpoint: no step appears twice.
"""

from __future__ import annotations

import importlib.util
import logging
import resource
import sys

import torch

from .config import Config, ConfigError

logger = logging.getLogger(__name__)

HEADLINE_METRICS = ("env/reward_mean", "objective/kl", "ppo/loss/total", "objective/entropy")
# accelerate's tracker name -> the package it needs
_TRACKER_PACKAGES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "comet_ml": "comet_ml",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
    "trackio": "trackio",
}


def check_trackers(names: list[str]) -> None:
    """Fail before training when a configured tracker is unknown or its package is not installed."""
    for name in names:
        if name not in _TRACKER_PACKAGES:
            raise ConfigError(
                f"log.trackers: unknown tracker {name!r}; accelerate supports {sorted(_TRACKER_PACKAGES)}"
            )
        if importlib.util.find_spec(_TRACKER_PACKAGES[name]) is None:
            raise ConfigError(
                f"log.trackers has {name!r} but the package {_TRACKER_PACKAGES[name]!r} is not installed (pip "
                f"install {_TRACKER_PACKAGES[name]})"
            )


def flat_hparams(cfg: Config) -> dict[str, int | float | str | bool]:
    """``{"ppo.cliprange": 0.2, "reward.functions": "['chinese_rule']", ...}``: scalars kept, the rest as strings."""
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in cfg.flat().items()}


def peak_memory_gb(device: torch.device) -> float:
    """Peak accelerator memory allocated since the last reset on GPU; peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2**20 if sys.platform != "darwin" else kb / 2**30  # macOS reports bytes


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


class RunTracker:
    """Starts the configured trackers and writes one step's statistics and extras."""

    def __init__(self, accelerator, cfg: Config):
        self.accelerator, self.cfg = accelerator, cfg
        self.enabled = bool(cfg.log.trackers)

    def start(self, resume_step: int) -> None:
        acc, cfg = self.accelerator, self.cfg
        if not self.enabled:
            return
        # Steps after the checkpoint that an interrupted run logged are dropped by TensorBoard.
        init_kwargs = {"tensorboard": {"purge_step": resume_step + 1}} if resume_step else {}
        acc.init_trackers(cfg.log.project_name, init_kwargs=init_kwargs)
        hparams = flat_hparams(cfg)
        for tracker in acc.trackers:
            if tracker.name == "tensorboard":
                self._tensorboard_hparams(tracker.writer, hparams)
            else:
                tracker.store_init_configuration(hparams)

    @property
    def _tb(self):
        if not (self.enabled and self.accelerator.is_main_process and "tensorboard" in self.cfg.log.trackers):
            return None
        return self.accelerator.get_tracker("tensorboard", unwrap=True)

    @staticmethod
    def _tensorboard_hparams(writer, hparams: dict) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        # Metric tags name scalars this writer logs anyway; the HParams dashboard reads them there.
        exp, ssi, sei = hparams_summary(hparams, {m: 0.0 for m in HEADLINE_METRICS})
        for summary in (exp, ssi, sei):
            writer.file_writer.add_summary(summary)

    def log(
        self,
        step: int,
        stats: dict[str, float],
        rewards: torch.Tensor,
        response_lengths: torch.Tensor,
        samples: dict | None,
    ) -> None:
        """Scalars for ``step``; histograms of the global batch; a sample table when ``samples`` is given."""
        if not self.enabled:
            return
        self.accelerator.log(stats, step=step)
        writer = self._tb
        if writer is None:
            return
        for tag, values in (("env/reward_dist", rewards), ("tokens/responses_len_dist", response_lengths)):
            values = values.detach().double().cpu()
            try:
                writer.add_histogram(tag, values[values.isfinite()], step)
            except ValueError as e:  # tensorboard cannot bin e.g. values near the float limits
                logger.warning("histogram %s not written at step %d: %s", tag, step, e)
        if samples is not None:
            writer.add_text(
                "samples", sample_table(samples["prompts"], samples["completions"], samples["rewards"]), step
            )
        writer.flush()


def sample_table(prompts: list[str], completions: list[str], rewards: list[float], max_chars: int = 200) -> str:
    """A Markdown table (TensorBoard's text plugin renders it) of prompt | completion | reward."""

    def cell(text: str) -> str:
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= max_chars else text[: max_chars - 1] + "…"

    rows = [f"| {cell(p)} | {cell(c)} | {r:.3f} |" for p, c, r in zip(prompts, completions, rewards, strict=True)]
    return "\n".join(["| prompt | completion | reward |", "|---|---|---|", *rows])
