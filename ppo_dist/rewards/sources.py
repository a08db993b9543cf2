"""``reward.functions`` entries -> callables: built-ins, ``module:fn``, ``file.py:fn``, reward model, HTTP."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path

from ..config import RewardConfig
from .builtin import BUILTIN_REWARDS, RewardFn
from .errors import RewardSpecError
from .http import HttpReward
from .model import RewardModelScorer

_RESERVED_NAMES = ("score", "valid")


def _load_attr(spec: str) -> RewardFn:
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise RewardSpecError(f"reward spec {spec!r}: expected package.module:function or path/to/file.py:function")
    if target.endswith(".py"):
        path = Path(target).resolve()
        if not path.is_file():
            raise RewardSpecError(f"reward spec {spec!r}: file not found: {path}")
        mod_name = f"_ppo_dist_reward_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        module = sys.modules.get(mod_name)
        if module is None:
            mod_spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[mod_name] = module  # dataclasses / pickling inside the file need it registered
            try:
                mod_spec.loader.exec_module(module)
            except Exception as e:
                del sys.modules[mod_name]
                raise RewardSpecError(f"reward spec {spec!r}: executing {path} raised {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(target)
        except Exception as e:
            raise RewardSpecError(
                f"reward spec {spec!r}: cannot import module {target!r}: {type(e).__name__}: {e}"
            ) from e
    if not hasattr(module, attr):
        raise RewardSpecError(f"reward spec {spec!r}: {target!r} has no attribute {attr!r}")
    fn = getattr(module, attr)
    if not callable(fn):
        raise RewardSpecError(f"reward spec {spec!r}: {attr!r} is a {type(fn).__name__}, not callable")
    return fn


def load_reward_fn(spec: str | RewardFn, cfg: RewardConfig | None = None) -> tuple[str, RewardFn]:
    """``(display name, callable)`` for one ``reward.functions`` entry (see the module doc)."""
    cfg = cfg or RewardConfig()
    if callable(spec):
        name = getattr(spec, "__name__", type(spec).__name__)
        return ("lambda" if name == "<lambda>" else name), spec
    if not isinstance(spec, str):
        raise RewardSpecError(
            f"reward function spec must be a string or a callable, got {type(spec).__name__} {spec!r}"
        )
    if spec in BUILTIN_REWARDS:
        return spec, BUILTIN_REWARDS[spec](cfg)
    if spec == "reward_model":
        return spec, RewardModelScorer(cfg.model_path, cfg.model_max_length, cfg.model_batch_size)
    if spec == "http" or spec.startswith(("http://", "https://")):
        url = cfg.url if spec == "http" else spec
        if not url:
            raise RewardSpecError("reward function 'http' needs reward.url")
        return "http", HttpReward(url, cfg.http_timeout, cfg.http_retries, cfg.http_backoff)
    if ":" in spec:
        return spec.rpartition(":")[2], _load_attr(spec)
    raise RewardSpecError(
        f"unknown reward function {spec!r}; built-in: {', '.join(BUILTIN_REWARDS)}; "
        "or reward_model, http, an http(s):// URL, package.module:function, path/to/file.py:function"
    )


@dataclass
class RewardSource:
    """One component of the reward: how to call it and what it weighs."""

    name: str
    fn: RewardFn
    weight: float
    legacy: bool  # fn(completions)
    columns: frozenset[str] | None  # columns to pass; None = all (fn takes **kwargs)
    threaded: bool  # run in a worker thread bounded by the timeout

    @classmethod
    def create(cls, name: str, fn: RewardFn, weight: float) -> RewardSource:
        legacy, columns = False, None
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):  # some builtins / C callables have no signature: full convention
            params = None
        if params is not None:
            kinds = [p.kind for p in params]
            if inspect.Parameter.VAR_KEYWORD not in kinds:
                positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
                legacy = len(positional) == 1 and inspect.Parameter.VAR_POSITIONAL not in kinds
                columns = frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)) - {
                    p.name for p in positional[:2]
                }
        return cls(name, fn, weight, legacy, columns, threaded=not isinstance(fn, RewardModelScorer))


def unique_name(name: str, taken: set[str]) -> str:
    out, k = name, 1
    while out in taken or out in _RESERVED_NAMES:
        k += 1
        out = f"{name}_{k}"
    taken.add(out)
    return out
