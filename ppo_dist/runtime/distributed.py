"""Processes through accelerate: building the Accelerator, and every collective the package uses
(gathers, reductions, agreeing on a failure), each a no-op on one process. DeepSpeed specifics are
in :mod:`.zero`."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, TorchDynamoPlugin

from ..config import PRECISIONS, BatchPlan, Config
from . import zero

logger = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
_INT_MAX = 2**31 - 1


def reuse_freed_cpu_memory() -> bool:
    """Make glibc keep freed blocks (up to 32 MiB each) in the heap instead of unmapping them.

    By default glibc serves every block above its mmap threshold with a fresh ``mmap`` and gives
    it back on free, so each weight copy, gradient and activation of that size costs page faults
    and zeroing by the kernel on every PPO micro-step. With bf16 autocast on a GPT-2-124M policy
    that was about a quarter of the step on CPU. Returns whether the settings were applied (only
    on Linux with glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        applied = (
            libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
        )
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    logger.debug("glibc malloc: mmap threshold %d, trim threshold %d (%s)", _MMAP_THRESHOLD_MAX, _INT_MAX, applied)
    return applied


def seed_for(*parts: int) -> int:
    """A 63-bit seed from integers (seed, step, rank, ...), stable across runs and processes."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


def world_size_from_env() -> int:
    """World size as set by ``accelerate launch`` / torchrun, known before any process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def build_accelerator(cfg: Config, plan: BatchPlan) -> Accelerator:
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    pg_kwargs = InitProcessGroupKwargs(backend=backend, timeout=timedelta(seconds=cfg.train.collective_timeout))
    trackers = list(cfg.log.trackers) or None
    plugin = zero.deepspeed_plugin(cfg, plan) if zero.deepspeed_requested() else None
    dynamo = TorchDynamoPlugin(backend="inductor", dynamic=True) if cfg.train.compile else None
    # Several processes and no GPU: the launch is CPU-only, so the processes talk over gloo even when the
    # launcher was not told --cpu (accelerate would otherwise start each one as a lone process).
    cpu_only = plan.world_size > 1 and backend == "gloo" and plugin is None
    accelerator = Accelerator(
        cpu=cpu_only,
        deepspeed_plugin=plugin,
        dynamo_plugin=dynamo,
        mixed_precision=PRECISIONS[cfg.model.dtype],
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        step_scheduler_with_optimizer=False,  # stepped by hand, once per optimiser step, on every world size
        log_with=trackers,
        project_dir=cfg.train.output_dir,
        kwargs_handlers=[pg_kwargs] if plan.world_size > 1 or plugin is not None else [],
    )
    if accelerator.device.type == "cpu" and cfg.train.cpu_malloc_reuse and not reuse_freed_cpu_memory():
        logger.info("train.cpu_malloc_reuse: no glibc mallopt on this platform; the allocator is left as it is")
    if accelerator.num_processes != plan.world_size:
        raise RuntimeError(
            f"the launcher reported WORLD_SIZE={plan.world_size} but accelerate started {accelerator.num_processes} "
            "processes: accelerate's process state was created as a single process before the trainer (a model "
            "loaded with device_map, or PartialState()/Accelerator() called first); on CPU call "
            "accelerate.PartialState(cpu=True) at the top of the script, or launch with `accelerate launch --cpu` "
            "(ACCELERATE_USE_CPU=true)"
        )
    return accelerator


def gather_padded(
    accelerator: Accelerator, t: torch.Tensor, pad_value: float | int = 0, pad_first: bool = False
) -> torch.Tensor:
    """Concatenate a ``(B_local, T_local)`` tensor from every process along dim 0, padding dim 1."""
    if accelerator.num_processes == 1:
        return t
    t = accelerator.pad_across_processes(t.contiguous(), dim=1, pad_index=pad_value, pad_first=pad_first)
    return accelerator.gather(t)


def gather_1d(accelerator: Accelerator, t: torch.Tensor) -> torch.Tensor:
    return t if accelerator.num_processes == 1 else accelerator.gather(t.contiguous())


def any_process(accelerator: Accelerator, flag: bool) -> bool:
    """True on every process when ``flag`` is true on at least one (one small all-reduce)."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() > 0)


def failures_everywhere(accelerator: Accelerator, error: BaseException | None) -> list[str] | None:
    """Every process agrees on a failure before going on to a collective.

    Returns None on every process when no process failed; otherwise, on every process, one message
    per rank in rank order ("" for ranks that did not fail), so that all raise the same error
    instead of the healthy ones hanging in the next collective. One all-reduce; strings are gathered
    only on failure.
    """
    if not any_process(accelerator, error is not None):
        return None
    return gather_strings(accelerator, "" if error is None else str(error))


def gather_strings(accelerator: Accelerator, text: str) -> list[str]:
    """One string from every process, in rank order (only for rare events: it pickles)."""
    if accelerator.num_processes == 1:
        return [text]
    from accelerate.utils import gather_object

    return list(gather_object([text]))


def broadcast_object(accelerator: Accelerator, obj: object) -> object:
    """The main process's ``obj`` on every process (pickled; for rare, small objects)."""
    if accelerator.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj], from_process=0)[0]


def reduce_max(accelerator: Accelerator, t: torch.Tensor) -> torch.Tensor:
    return t if accelerator.num_processes == 1 else accelerator.reduce(t, reduction="max")


def reduce_sum(accelerator: Accelerator, t: torch.Tensor) -> torch.Tensor:
    return t if accelerator.num_processes == 1 else accelerator.reduce(t, reduction="sum")


def unwrap(accelerator: Accelerator, model):
    """The module under the DDP / DeepSpeed / torch.compile wrappers."""
    return accelerator.unwrap_model(model, keep_torch_compile=False)


def full_state_dict(accelerator: Accelerator, model) -> dict | None:
    """The model's whole state dict (consolidated from shards under ZeRO-3: on the main process only,
    None elsewhere), with the names of the unwrapped module (torch.compile's ``_orig_mod.`` removed).
    Every process must call it (ZeRO-3 gathers)."""
    state = accelerator.get_state_dict(model)
    return None if state is None else {k.removeprefix("_orig_mod."): v for k, v in state.items()}


def shutdown(accelerator: Accelerator) -> None:
    """End trackers and destroy the process group (accelerate's ``end_training`` does both) so gloo
    does not abort at interpreter exit."""
    accelerator.end_training()
