"""Calling a reward function safely: a time limit per call, and validation of what it returns."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import math
import numbers
import threading
from collections.abc import Sequence
from typing import Any

import torch

from .builtin import RewardFn
from .errors import RewardError, RewardTimeoutError, _snippet

_FLOAT32_MAX = torch.finfo(torch.float32).max


async def _await(awaitable: Any) -> Any:
    return await awaitable


def call_with_timeout(name: str, fn: RewardFn, args: tuple, kwargs: dict, timeout: float) -> Any:
    """``fn(*args, **kwargs)`` in a daemon thread; awaited if it returns an awaitable; at most ``timeout`` s."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        future.set_running_or_notify_cancel()
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))  # a fresh event loop in this thread
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            future.set_exception(e)
        else:
            future.set_result(result)

    # A plain daemon thread, not a ThreadPoolExecutor: executors join their threads at exit, so an
    # abandoned stuck call would hang interpreter shutdown.
    threading.Thread(target=run, name=f"reward-{name}", daemon=True).start()
    done, _ = concurrent.futures.wait([future], timeout=timeout)
    if not done:
        raise RewardTimeoutError(
            f"reward function {name!r} did not return within reward.timeout={timeout:g}s (its thread is abandoned)"
        )
    return future.result()


def validate_rewards(name: str, values: object, completions: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
    """Check one function's output. Returns float64 ``(B,)`` values with NaN at invalid samples,
    and one message per invalid sample. Raises ``RewardError`` for call-level problems."""
    if isinstance(values, torch.Tensor):
        values = values.detach().double().cpu().flatten().tolist()
    elif hasattr(values, "tolist") and not isinstance(values, (list, tuple)):  # numpy arrays
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise RewardError(
            f"reward function {name!r} returned {type(values).__name__}, expected a list of floats (one per completion)"
        )
    if len(values) != len(completions):
        raise RewardError(f"reward function {name!r} returned {len(values)} values for {len(completions)} completions")
    out, problems = [], []
    for i, v in enumerate(values):
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= _FLOAT32_MAX
        if not ok:
            problems.append(
                f"reward function {name!r} returned {v!r} for sample {i} (completion {_snippet(completions[i])}); "
                "expected a finite float"
            )
        out.append(float(v) if ok else math.nan)
    return torch.tensor(out, dtype=torch.float64), problems
