"""Prompt datasets and the per-process prompt stream.

The prompt stream is a pure function of ``(seed, step)``: epoch ``e`` is a seeded permutation of
the dataset, epochs are concatenated, and PPO step ``k`` takes the global slice
``[k * batch_size, (k + 1) * batch_size)``; process ``r`` takes its contiguous ``local_batch_size``
part of that slice. Nothing needs saving to resume exactly, and the data cycles for any number of
steps (a dataset smaller than one global batch simply repeats within a batch, with a warning).

Prompts are checked once, when loaded: a file that cannot be parsed, a prompt column that holds
something other than text, and empty prompts (missing, ``""`` or whitespace only) are a
``ConfigError`` naming the file and the first line (JSON Lines, CSV) or row (other sources) at
fault. Empty prompts are refused rather than replaced: a response generated from nothing says
nothing about the prompt set, and a file of empty prompts is almost always a wrong
``data.prompt_column`` or a broken export.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ConfigError, DataConfig

logger = logging.getLogger(__name__)

_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load_dataset_source(cfg: DataConfig):
    """The ``datasets.Dataset`` named by ``data.path`` or ``data.dataset_name`` (split ``data.split``),
    or None when neither is set. Raises ``ConfigError`` (one line, naming the file and the line or
    row where it is knowable) when the source cannot be read or parsed."""
    import datasets

    if cfg.path:
        path = Path(cfg.path)
        source = cfg.path
        if not path.exists():
            raise ConfigError(f"data.path {cfg.path!r} does not exist")
        if path.is_dir():
            try:
                ds = datasets.load_from_disk(str(path))
            except Exception as e:  # noqa: BLE001 - any failure to read the directory is a data error
                raise ConfigError(f"{source}: not a dataset saved with save_to_disk ({_root_cause(e)})") from e
        else:
            builder = _BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise ConfigError(
                    f"data.path {cfg.path!r}: unsupported file type {path.suffix!r} (use .jsonl, .json, .csv or "
                    ".parquet)"
                )
            try:
                with _datasets_failure_logs_dropped():
                    ds = datasets.load_dataset(builder, data_files=str(path), split="train")
            except Exception as e:  # noqa: BLE001 - DatasetGenerationError, ArrowInvalid, UnicodeDecodeError, ...
                raise ConfigError(f"{source}: {_why_unreadable(path, builder, e)}") from e
    elif cfg.dataset_name:
        source = f"data.dataset_name {cfg.dataset_name!r}"
        try:
            ds = datasets.load_dataset(cfg.dataset_name, cfg.dataset_config, split=cfg.split)
        except Exception as e:  # noqa: BLE001 - not found, no network, bad split: reported in one line
            raise ConfigError(f"{source}: {_root_cause(e)}") from e
    else:
        return None
    if isinstance(ds, datasets.DatasetDict):
        if cfg.split not in ds:
            raise ConfigError(f"data.split {cfg.split!r} not in the dataset; available splits: {', '.join(ds)}")
        ds = ds[cfg.split]
    return ds


def load_prompt_dataset(cfg: DataConfig):
    """A ``datasets.Dataset`` with ``cfg.prompt_column`` (other columns are passed to rewards).

    Raises ``ConfigError`` (one line, naming the file and line or row) when the source cannot be
    read or parsed, lacks the column, is empty, or has a prompt that is not text or is empty.
    """
    import datasets

    ds = load_dataset_source(cfg)
    source = cfg.path or (f"data.dataset_name {cfg.dataset_name!r}" if cfg.dataset_name else "data.prompts")
    if ds is None:
        ds = datasets.Dataset.from_dict({cfg.prompt_column: [str(p) for p in cfg.prompts]})
    if cfg.prompt_column not in ds.column_names:
        raise ConfigError(
            f"data.prompt_column {cfg.prompt_column!r} not in the dataset; available columns: "
            f"{', '.join(ds.column_names)}"
        )
    if len(ds) == 0:
        raise ConfigError("the prompt dataset is empty")
    _check_prompts(ds[cfg.prompt_column][:], cfg.prompt_column, source, lambda row: _where(cfg, row))
    return ds


def tokenize_prompts(texts: Sequence[str], tokenizer, max_length: int, truncation: str) -> list[torch.Tensor]:
    """Token ids of each prompt (no padding). Over-long prompts keep their last ``max_length`` tokens
    (warned once) or raise, per ``truncation``. Empty prompts (``""``, whitespace only, or no tokens)
    raise ``ConfigError`` naming how many there are and the index of the first."""
    texts = list(texts[:])  # a slice: datasets' lazy Column converts in one go (iterating it is per row, ~60x slower)
    empty = _empty_prompts(texts)
    if not empty:
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise ConfigError(
            f"{len(empty)} of {len(texts)} prompts are empty or whitespace only (first: prompt {empty[0]}); "
            "every prompt needs text to generate from"
        )
    out, n_long = [], 0
    for i, ids in enumerate(encoded):
        if len(ids) > max_length:
            if truncation == "error":
                raise ConfigError(
                    f"prompt {i} has {len(ids)} tokens > data.max_prompt_length={max_length} ({texts[i][:60]!r}...)"
                )
            ids, n_long = ids[-max_length:], n_long + 1
        out.append(torch.tensor(ids, dtype=torch.long))
    if n_long:
        logger.warning(
            "%d prompt(s) longer than data.max_prompt_length=%d were truncated from the left", n_long, max_length
        )
    return out


# ---------------------------------------------------------------- checks and error messages


def _empty_prompts(texts: Sequence) -> list[int]:
    """Indices of missing (None), empty and whitespace-only prompts."""
    return [i for i, t in enumerate(texts) if t is None or (isinstance(t, str) and not t.strip())]


def _check_prompts(texts: Sequence, column: str, source: str, where: Callable[[int], str]) -> None:
    for i, t in enumerate(texts):
        if t is not None and not isinstance(t, str):
            raise ConfigError(
                f"{source}: column {column!r} holds {type(t).__name__} {t!r} ({where(i)}); prompts must be text"
            )
    empty = _empty_prompts(texts)
    if empty:
        raise ConfigError(
            f"{source}: {len(empty)} of {len(texts)} prompts in column {column!r} are empty or missing "
            f"(first: {where(empty[0])}); remove them or give them text"
        )


def _where(cfg: DataConfig, row: int) -> str:
    """Where a user finds dataset row ``row``: ``line N`` of a JSON Lines / CSV file, else ``row i``."""
    if not cfg.path:
        return f"row {row}" if cfg.dataset_name else f"data.prompts[{row}]"
    path = Path(cfg.path)
    builder = _BUILDERS.get(path.suffix.lower()) if path.is_file() else None
    if builder == "json" and _json_lines(path):
        return f"line {_jsonl_line_of_row(path, row)}"
    if builder == "csv":
        return f"line {_csv_line_of_row(path, row)}"
    return f"row {row}"


def _first_value(path: Path):
    """The first non-blank line of a file, parsed as JSON on its own (``JSONDecodeError`` if it is not)."""
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                return json.loads(raw)
    raise json.JSONDecodeError("no data", "", 0)


def _json_lines(path: Path) -> bool:
    """Whether a .json/.jsonl file holds one JSON object per line (its first non-blank line is one)."""
    try:
        return isinstance(_first_value(path), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def _jsonl_line_of_row(path: Path, row: int) -> int:
    """1-based line of row ``row`` (0-based) of a JSON Lines file; blank lines hold no row."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if raw.strip():
                if row == 0:
                    return n
                row -= 1
    raise IndexError(row)


def _csv_line_of_row(path: Path, row: int) -> int:
    """1-based line where data row ``row`` (0-based, after the header) of a CSV file starts."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader, None)  # header
        start = reader.line_num + 1
        for record in reader:
            if record:  # blank lines hold no row
                if row == 0:
                    return start
                row -= 1
            start = reader.line_num + 1
    raise IndexError(row)


def _why_unreadable(path: Path, builder: str, error: Exception) -> str:
    """What is wrong with a file ``datasets`` could not load, with its line where it can be known."""
    if builder in ("json", "csv"):
        blank = True
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    return f"not UTF-8 text: byte 0x{raw[e.start]:02x} at column {e.start + 1} (line {n})"
                blank = blank and not raw.strip()
        if blank:
            return "the file is empty (no prompts)"
    if builder == "json":
        try:
            _first_value(path)
            lines = True
        except json.JSONDecodeError:  # not one JSON value per line: a JSON document
            lines = False
        if lines:
            with open(path, "rb") as f:
                for n, raw in enumerate(f, 1):
                    if not raw.strip():
                        continue
                    try:
                        row = json.loads(raw.rstrip(b"\r\n"))
                    except json.JSONDecodeError as e:
                        return f"invalid JSON: {e.msg} at column {e.colno} (line {n})"
                    if not isinstance(row, dict):
                        return f"expected one JSON object per line, got a {type(row).__name__} (line {n})"
        else:
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                return f"invalid JSON: {e.msg} at column {e.colno} (line {e.lineno})"
    return f"cannot be read as {builder.upper()}: {_root_cause(error)}"


def _root_cause(error: BaseException) -> str:
    """``Type: message`` (first line) of the innermost informative exception behind ``error``."""
    chain = [error]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    informative = [e for e in chain if type(e).__module__.split(".")[0] != "datasets"] or chain
    e = informative[0]
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


class _DropDatasetsErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.name.startswith("datasets"))


@contextlib.contextmanager
def _datasets_failure_logs_dropped():
    """``datasets`` logs a load failure (ERROR) right before raising it; our ConfigError says it in one line."""
    handlers = {*logging.getLogger("datasets").handlers, *logging.getLogger().handlers}
    drop = _DropDatasetsErrors()
    for h in handlers:
        h.addFilter(drop)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(drop)


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
        return self.indices_at(step * self.batch_size)

    def indices_at(self, position: int) -> list[int]:
        """Dataset rows of the ``batch_size`` prompts from ``position`` of the stream on."""
        n = len(self)
        return [int(self._perm(i // n)[i % n]) for i in range(position, position + self.batch_size)]

    def local_batch(self, step: int, rank: int, world_size: int, n_samples_per_prompt: int = 1) -> PromptBatch:
        """Process ``rank``'s samples of step ``step``: the step's prompts, each repeated
        ``n_samples_per_prompt`` times (a group), split into ``world_size`` contiguous parts."""
        return self.local_batch_at(step * self.batch_size, rank, world_size, n_samples_per_prompt)

    def local_batch_at(self, position: int, rank: int, world_size: int, n_samples_per_prompt: int = 1) -> PromptBatch:
        """As :meth:`local_batch`, for the ``batch_size`` prompts from stream position ``position`` on
        (dynamic sampling draws further prompts past a step's own)."""
        samples = [i for i in self.indices_at(position) for _ in range(n_samples_per_prompt)]
        local = len(samples) // world_size
        idx = samples[rank * local : (rank + 1) * local]
        rows = self.dataset.select(idx)
        columns = {c: rows[c] for c in rows.column_names if c != self.prompt_column}
        return PromptBatch(idx, [self.input_ids[i] for i in idx], list(rows[self.prompt_column]), columns)
