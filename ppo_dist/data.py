"""Prompt datasets and the per-process prompt stream.

The prompt stream is a pure function of ``(seed, step)``: epoch ``e`` is a seeded permutation of
the dataset, epochs are concatenated, and PPO step ``k`` takes the global slice
``[k * batch_size, (k + 1) * batch_size)``; process ``r`` takes its contiguous ``local_batch_size``
part of that slice. Nothing needs saving to resume exactly, and the data cycles for any number of
steps (a dataset smaller than one global batch simply repeats within a batch, with a warning).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ConfigError, DataConfig

logger = logging.getLogger(__name__)


def load_dataset_source(cfg: DataConfig):
    """The ``datasets.Dataset`` named by ``data.path`` or ``data.dataset_name`` (split ``data.split``),
    or None when neither is set."""
    import datasets

    if cfg.path:
        path = Path(cfg.path)
        if not path.exists():
            raise ConfigError(f"data.path {cfg.path!r} does not exist")
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
        else:
            builder = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(path.suffix.lower())
            if builder is None:
                raise ConfigError(
                    f"data.path {cfg.path!r}: unsupported file type {path.suffix!r} (use .jsonl, .json, .csv or "
                    ".parquet)"
                )
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    elif cfg.dataset_name:
        ds = datasets.load_dataset(cfg.dataset_name, cfg.dataset_config, split=cfg.split)
    else:
        return None
    if isinstance(ds, datasets.DatasetDict):
        if cfg.split not in ds:
            raise ConfigError(f"data.split {cfg.split!r} not in the dataset; available splits: {', '.join(ds)}")
        ds = ds[cfg.split]
    return ds


def load_prompt_dataset(cfg: DataConfig):
    """A ``datasets.Dataset`` with ``cfg.prompt_column`` (other columns are passed to rewards)."""
    import datasets

    ds = load_dataset_source(cfg)
    if ds is None:
        ds = datasets.Dataset.from_dict({cfg.prompt_column: [str(p) for p in cfg.prompts]})
    if cfg.prompt_column not in ds.column_names:
        raise ConfigError(
            f"data.prompt_column {cfg.prompt_column!r} not in the dataset; available columns: "
            f"{', '.join(ds.column_names)}"
        )
    if len(ds) == 0:
        raise ConfigError("the prompt dataset is empty")
    return ds


def tokenize_prompts(texts: list[str], tokenizer, max_length: int, truncation: str) -> list[torch.Tensor]:
    """Token ids of each prompt (no padding). Over-long prompts keep their last ``max_length`` tokens
    (warned once) or raise, per ``truncation``; empty prompts get the BOS token (warned once)."""
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    out, n_long, n_empty = [], 0, 0
    for i, ids in enumerate(encoded):
        if len(ids) > max_length:
            if truncation == "error":
                raise ConfigError(
                    f"prompt {i} has {len(ids)} tokens > data.max_prompt_length={max_length} ({texts[i][:60]!r}...)"
                )
            ids, n_long = ids[-max_length:], n_long + 1
        if not ids:
            ids, n_empty = [start], n_empty + 1
        out.append(torch.tensor(ids, dtype=torch.long))
    if n_long:
        logger.warning(
            "%d prompt(s) longer than data.max_prompt_length=%d were truncated from the left", n_long, max_length
        )
    if n_empty:
        logger.warning("%d empty prompt(s) start from the BOS token alone", n_empty)
    return out


@dataclass
class PromptBatch:
    """One process's prompts for one PPO step."""

    indices: list[int]
    input_ids: list[torch.Tensor]
    texts: list[str]
    columns: dict[str, list]


class PromptStream:
    """Deterministic, world-size-aware prompt batches; see the module docstring."""

    def __init__(self, dataset, input_ids: list[torch.Tensor], prompt_column: str, batch_size: int, seed: int):
        self.dataset, self.input_ids, self.prompt_column = dataset, input_ids, prompt_column
        self.batch_size, self.seed = batch_size, seed
        self._perm_cache: dict[int, torch.Tensor] = {}
        if len(dataset) < batch_size:
            logger.warning(
                "dataset has %d prompts < rollout.batch_size=%d: prompts repeat within a batch",
                len(dataset),
                batch_size,
            )

    def __len__(self) -> int:
        return len(self.dataset)

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perm_cache:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm_cache = {epoch: torch.randperm(len(self), generator=g)}
        return self._perm_cache[epoch]

    def global_indices(self, step: int) -> list[int]:
        n, start = len(self), step * self.batch_size
        return [int(self._perm(i // n)[i % n]) for i in range(start, start + self.batch_size)]

    def local_batch(self, step: int, rank: int, world_size: int) -> PromptBatch:
        local = self.batch_size // world_size
        idx = self.global_indices(step)[rank * local : (rank + 1) * local]
        rows = self.dataset.select(idx)
        columns = {c: rows[c] for c in rows.column_names if c != self.prompt_column}
        return PromptBatch(idx, [self.input_ids[i] for i in idx], list(rows[self.prompt_column]), columns)
