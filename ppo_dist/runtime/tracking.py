"""Experiment tracking: scalars through ``accelerator.log``, plus TensorBoard extras.

Every value logged here is already global: the experience and the update compute statistics on the
gathered batch, and the one per-step reduction (``Trainer._step_flags``) also carries the peak memory
of every process.
Only the main process writes (accelerate creates trackers there alone).

TensorBoard gets, besides the scalars: histograms of rewards and response lengths, a table of
sample prompts/completions/rewards every ``log.samples_every`` steps, and the flattened config as
hyperparameters, tied to the headline metrics so the HParams dashboard compares runs. They go
through the same writer (no second event file). A resumed run passes ``purge_step`` so TensorBoard
drops events an interrupted run wrote after its last checkpoint: no step appears twice.
"""

from __future__ import annotations

import logging
import resource
import sys

import torch

from ..config import Config, ConfigError

logger = logging.getLogger(__name__)

HEADLINE_METRICS = ("env/reward_mean", "objective/kl", "ppo/loss/total", "objective/entropy")
HISTORY_KEYS = ("env/reward_mean", "objective/kl", "objective/kl_coef")  # kept in checkpoints, for the summary


def check_trackers(names: list[str]) -> None:
    """Fail before training when a configured tracker is unknown to accelerate or not installed."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ConfigError(
                f"log.trackers: unknown tracker {name!r}; accelerate supports {sorted(LOGGER_TYPE_TO_CLASS)}"
            )
        if name not in available:
            raise ConfigError(f"log.trackers has {name!r} but its package is not installed (pip install {name})")


def flat_hparams(values: dict) -> dict[str, int | float | str | bool]:
    """``{"ppo.cliprange": 0.2, "reward.functions": "['chinese_rule']", ...}``: scalars kept, the rest
    (lists, None, dicts) as strings, which is what the HParams view takes."""
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in values.items()}


def peak_memory_gb(device: torch.device) -> float:
    """Peak accelerator memory allocated since the last reset on GPU; on CPU the peak resident set
    size since the last reset (Linux: VmHWM, which :func:`reset_peak_memory` resets), else since start."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**20
    except (OSError, StopIteration):
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / 2**20 if sys.platform != "darwin" else kb / 2**30  # macOS reports bytes


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (each PPO step reports its own peak)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: "5" resets the high-water mark of the resident set to its current size
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # elsewhere the CPU peak covers the whole run


class RunTracker:
    """Starts the configured trackers and writes one step's statistics and extras."""

    def __init__(self, accelerator, cfg: Config):
        self.accelerator, self.cfg = accelerator, cfg
        self.enabled = bool(cfg.log.trackers)

    def start(self, resume_step: int = 0, hparams: dict | None = None, init_kwargs: dict | None = None) -> None:
        """Start the trackers; ``hparams`` (default: the flattened config) go to the HParams view."""
        acc, cfg = self.accelerator, self.cfg
        if not self.enabled:
            return
        init_kwargs = dict(init_kwargs or {})
        if resume_step:  # steps an interrupted run logged after its checkpoint are dropped by TensorBoard
            init_kwargs["tensorboard"] = {**init_kwargs.get("tensorboard", {}), "purge_step": resume_step + 1}
        acc.init_trackers(cfg.log.project_name, init_kwargs=init_kwargs)
        hparams = flat_hparams(cfg.flat() if hparams is None else hparams)
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

    def log_step(self, step: int, stats: dict[str, float], experience) -> None:
        """The trainer's per-step logging, at the cadence of ``log.log_every`` / ``log.samples_every``:
        scalars, histograms of the global batch and, every ``samples_every`` steps, a table of this
        process's samples (main process only). ``experience`` is the step's
        :class:`~ppo_dist.rl.experience.Experience`: ``histograms()`` and ``sample_table()`` give the data."""
        lg = self.cfg.log
        if step % lg.log_every:
            return
        table = experience.sample_table() if lg.samples_every and step % lg.samples_every == 0 else None
        self.log(step, stats, experience.histograms(), table)

    def log(
        self,
        step: int,
        stats: dict[str, float],
        histograms: dict | None = None,
        table: dict | None = None,
        table_tag: str = "samples",
    ) -> None:
        """Scalars for ``step``; TensorBoard histograms (tag -> tensor) and a sample table (column -> values)."""
        if not self.enabled:
            return
        self.accelerator.log(stats, step=step)
        writer = self._tb
        if writer is None:
            return
        for tag, values in (histograms or {}).items():
            values = values.detach().double().cpu()
            try:
                writer.add_histogram(tag, values[values.isfinite()], step)
            except ValueError as e:  # tensorboard cannot bin e.g. values near the float limits
                logger.warning("histogram %s not written at step %d: %s", tag, step, e)
        if table is not None:
            writer.add_text(table_tag, sample_table(table), step)
        writer.flush()


def sample_table(columns: dict[str, list], max_chars: int = 200) -> str:
    """A Markdown table (TensorBoard's text plugin renders it), one column per key."""

    def cell(value) -> str:
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= max_chars else text[: max_chars - 1] + "…"

    rows = zip(*columns.values(), strict=True)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def throughput(stats: dict[str, float], num_samples: int) -> dict[str, float]:
    tokens = stats["tokens/responses_len_mean"] * num_samples
    return {
        "throughput/tokens_per_s": tokens / stats["time/step"],
        "throughput/samples_per_s": num_samples / stats["time/step"],
    }


def progress_bar(accelerator, cfg: Config, start: int):
    if not (cfg.log.progress_bar and accelerator.is_main_process):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.train.total_steps, initial=start, desc="ppo", dynamic_ncols=True)


def update_progress(progress, stats: dict[str, float]) -> None:
    if progress is None:
        return
    progress.update(1)
    postfix = {"reward": f"{stats['env/reward_mean']:.3f}", "tok_s": f"{stats['throughput/tokens_per_s']:.0f}"}
    if "objective/kl" in stats:
        postfix["kl"] = f"{stats['objective/kl']:.3f}"
    if "eval/reward_mean" in stats:  # the steps that evaluated
        postfix["eval_reward"] = f"{stats['eval/reward_mean']:.3f}"
        postfix.update({k[5:]: f"{v:.3f}" for k, v in stats.items() if k.startswith("eval/pass@")})
    progress.set_postfix(**postfix)


def print_summary(accelerator, history: list[dict[str, float]]) -> None:
    """``mean reward: first k steps a -> last k steps b (...)`` on the main process."""
    if not accelerator.is_main_process or not history:
        return
    k = min(10, max(1, len(history) // 2))
    first = sum(h["env/reward_mean"] for h in history[:k]) / k
    last = sum(h["env/reward_mean"] for h in history[-k:]) / k
    extra = ""
    if "objective/kl" in history[-1]:
        extra = f" (kl {history[-1]['objective/kl']:.3f}, kl_coef {history[-1]['objective/kl_coef']:.4f})"
    print(f"mean reward: first {k} steps {first:.3f} -> last {k} steps {last:.3f}{extra}", flush=True)
