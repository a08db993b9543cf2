"""Reward functions, their loading, validation of what they return, and score post-processing.

Data flow (one PPO step)::

    reward = build_reward(cfg.reward)                         # once, on every process
    components = reward(local_prompts, local_completions, **local_columns)   # per process, local shard
    scores = gather(components["score"]); finished = gather(local_finished)  # trainer
    scores = normalizer(scores, finished)                     # RewardNormalizer, on the global batch

``reward.functions`` entries (each becomes one component, keyed by a short unique display name):

  ``chinese_rule`` | ``length`` | ``contains_any``   built-ins below; their parameters are reward.* fields
                                                     (``length`` -> ``reward.length_target``,
                                                     ``contains_any`` -> ``reward.words``); no columns
  ``package.module:function``                        imported with importlib          (name: ``function``)
  ``path/to/file.py:function``                       loaded from the file (relative to the working dir)
  ``reward_model``                                   ``RewardModelScorer`` on ``reward.model_path``
  ``http``                                           ``HttpReward`` on ``reward.url``
  ``http://host:port/path`` / ``https://...``        ``HttpReward`` on that URL       (name: ``http``)

Repeated display names get ``_2``, ``_3`` ... (``score`` and ``valid`` are reserved).
``build_reward`` also takes Python callables in the list (programmatic use; name: ``fn.__name__``).

Calling convention of a user function: ``fn(prompts, completions, **columns) -> list[float]`` with
one value per completion; ``columns`` are the other dataset columns (lists, one entry per sample).
A function without ``**kwargs`` receives only the columns its signature names. A function with
exactly one positional parameter and no ``**kwargs`` is the legacy form ``fn(texts)`` and receives
the completions only. ``async def`` functions (or functions returning an awaitable) are run to
completion with ``asyncio.run`` in the call's worker thread. Values may be a list/tuple, a tensor or
an array; each must be a real number (``bool`` is not accepted) that is finite in float32.

Time limits: every user-function, built-in and HTTP call runs in a fresh daemon thread and is waited
for at most ``reward.timeout`` seconds; past that, ``RewardError`` is raised and the thread is
abandoned (Python cannot kill a thread: it keeps running in the background until it returns, and,
being a daemon, never keeps the process alive). ``reward_model`` runs in the calling thread instead:
it is a local forward pass (a full copy of the model on every process, also under ZeRO), bounded by
the compute itself.

Loading failures (a file, module, function or reward model that does not exist, a module that
raises on import) are ``RewardSpecError``: a ``RewardError`` and a ``ConfigError``, raised by
``build_reward`` before any call, so that ``train.py`` reports them as ``config error:`` before the
policy loads.

Call failures (``RewardError``, message names the function; for bad values also the sample index and the
start of the completion):

  * call-level: the function raised, timed out, returned a non-list or the wrong number of values.
    Always raised, whatever ``reward.on_invalid`` says: such a failure says nothing about a sample.
  * value-level: NaN, +-inf, ``None``, a non-number. ``reward.on_invalid``:
      ``error`` (default): raised.
      ``skip_sample``: the value becomes NaN in its component and in ``"score"``, a warning is logged,
      and the returned dict carries ``"valid"``: a bool ``(B,)`` tensor, False for those samples. The
      trainer drops invalid samples from the update and counts them. ``"valid"`` is present in every
      call in this mode (all True when nothing was invalid), so all processes return the same keys.

All functions are called even after one has failed, and the failures are raised together at the end:
this keeps a collective-bearing reward model in step across processes, so that the trainer's error
flag (not this module) is what makes the processes agree on the failure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import http.client
import importlib
import importlib.util
import inspect
import json
import logging
import math
import numbers
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ppo_dist.config import ON_INVALID, ConfigError, RewardConfig

logger = logging.getLogger(__name__)

RewardFn = Callable[..., Any]
_FLOAT32_MAX = torch.finfo(torch.float32).max
_RESERVED_NAMES = ("score", "valid")


class RewardError(RuntimeError):
    """A reward function failed or returned something unusable; the message names it."""


class RewardSpecError(RewardError, ConfigError):
    """A ``reward.functions`` entry cannot be loaded (no such file, module, function or reward model,
    or its module raised on import). A ``ConfigError`` too: ``train.py`` reports it as ``config error:``
    before any model loads."""


class RewardTimeoutError(RewardError):
    """A reward function did not return within ``reward.timeout`` seconds."""


def _snippet(text: object, n: int = 80) -> str:
    text = str(text)
    return repr(text[:n] + ("..." if len(text) > n else ""))


# ---------------------------------------------------------------- built-ins

POSITIVE_WORDS = ("好", "棒", "喜欢", "开心", "快乐", "有趣", "学习", "成长")


def _repeats_too_much(text: str, n: int = 2) -> bool:
    """True when fewer than half of the character n-grams (whitespace removed) are distinct.

    The legacy rule split on whitespace, which never fires on Chinese (no spaces). Character
    bigrams catch "好好好好好" and "开心开心开心" alike, and leave normal sentences alone.
    """
    chars = "".join(text.split())
    grams = [chars[i : i + n] for i in range(len(chars) - n + 1)]
    return len(grams) >= 4 and len(set(grams)) < 0.5 * len(grams)


def chinese_rule(prompts: Sequence[str], completions: Sequence[str], **_: object) -> list[float]:
    """The seed notebook's rule reward on the completion text.

    0.1 base; +0.5 when 10 <= characters (whitespace stripped) <= 50; +0.3 for each word of
    ``POSITIVE_WORDS`` that occurs at least once; -0.2 when fewer than half of the character
    bigrams are distinct (repetition). Range [-0.1, 3.0].
    """
    rewards = []
    for text in completions:
        text = text.strip()
        r = 0.1
        if 10 <= len(text) <= 50:
            r += 0.5
        r += 0.3 * sum(word in text for word in POSITIVE_WORDS)
        if _repeats_too_much(text):
            r -= 0.2
        rewards.append(r)
    return rewards


def length(prompts: Sequence[str], completions: Sequence[str], *, target: int) -> list[float]:
    """``min(n, target) / target`` where n = characters of the completion after ``str.strip()``.

    Range [0, 1]: grows linearly with length, 1.0 from ``target`` characters on (``reward.length_target``).
    """
    return [min(len(text.strip()), target) / target for text in completions]


def contains_any(prompts: Sequence[str], completions: Sequence[str], *, words: Sequence[str]) -> list[float]:
    """1.0 when the completion contains at least one of ``words`` as a substring (case-sensitive), else 0.0.

    ``words`` is ``reward.words``.
    """
    return [1.0 if any(w in text for w in words) else 0.0 for text in completions]


def _bind(fn: Callable[..., list[float]], **params: Any) -> RewardFn:
    """``fn`` with its config parameters fixed; dataset columns are not passed to built-ins."""

    def bound(prompts: Sequence[str], completions: Sequence[str], **_columns: object) -> list[float]:
        return fn(prompts, completions, **params)

    bound.__name__ = fn.__name__
    bound.__doc__ = fn.__doc__
    return bound


# name -> factory(RewardConfig) -> reward function. Register new built-ins here.
BUILTIN_REWARDS: dict[str, Callable[[RewardConfig], RewardFn]] = {
    "chinese_rule": lambda cfg: chinese_rule,
    "length": lambda cfg: _bind(length, target=cfg.length_target),
    "contains_any": lambda cfg: _bind(contains_any, words=list(cfg.words)),
}


# ---------------------------------------------------------------- reward model


class RewardModelScorer:
    """Scores ``prompt + completion`` (plain concatenation) with a sequence-classification model.

    Model and tokenizer come from the same directory (``reward.model_path``). The model must have
    ``num_labels == 1``; the score is ``logits[:, 0]`` (float32). Texts are scored in micro-batches
    of ``batch_size``, right-padded, truncated from the left to ``max_length`` tokens so that the end
    of the response is always seen. A tokenizer without a pad token uses its EOS token (logged
    warning) and ``model.config.pad_token_id`` is set to it, because HF's classification heads pool
    the rightmost non-pad token. Eval mode, no grad.

    Every process holds a full copy of the reward model on its device (it is not sharded under
    ZeRO): size it to fit next to the policy.
    """

    def __init__(self, path: str, max_length: int = 512, batch_size: int = 16, device: str | torch.device = "cpu"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not path or not Path(path).is_dir():
            raise RewardSpecError(f"reward_model: reward.model_path {path!r} is not a directory")
        self.path, self.max_length, self.batch_size = path, max_length, batch_size
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(path)
        except (OSError, ValueError) as e:  # missing/corrupt files, an unknown architecture
            first = (str(e).strip().splitlines() or [""])[0]
            raise RewardSpecError(f"reward_model: cannot load {path!r}: {type(e).__name__}: {first[:300]}") from e
        if model.config.num_labels != 1:
            raise RewardSpecError(
                f"reward_model {path!r} has num_labels={model.config.num_labels}; a reward model needs exactly 1 "
                "(score = logits[:, 0])"
            )
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise RewardSpecError(f"reward_model {path!r}: its tokenizer has neither a pad nor an EOS token")
            logger.warning(
                "reward_model %s: tokenizer has no pad token; using its EOS token %r for padding",
                path,
                self.tokenizer.eos_token,
            )
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"  # absolute-position models score identically to an unpadded forward
        self.tokenizer.truncation_side = "left"  # keep the end of the response
        model.eval().requires_grad_(False)
        self.model = model
        self.device = torch.device(device)
        self.model.to(self.device)

    def to(self, device: str | torch.device) -> RewardModelScorer:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **_columns: object) -> torch.Tensor:
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        scores = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
            )
            logits = self.model(
                input_ids=enc["input_ids"].to(self.device), attention_mask=enc["attention_mask"].to(self.device)
            ).logits
            scores.append(logits[:, 0].float())
        return torch.cat(scores) if scores else torch.zeros(0)


# ---------------------------------------------------------------- HTTP service


class HttpReward:
    """POSTs ``{"prompts": [...], "completions": [...], <columns>}`` as JSON to ``url``; expects ``{"rewards": [...]}``.

    Each attempt waits at most ``timeout`` seconds. Connection errors, timeouts and HTTP 5xx are
    retried ``retries`` times, sleeping ``backoff * 2**k`` before retry k (k = 0, 1, ...); a 4xx or an
    unparseable answer fails at once. Errors name the URL and the HTTP status / body start. The whole
    call is additionally bounded by ``reward.timeout`` (see the module doc).
    """

    def __init__(self, url: str, timeout: float = 10.0, retries: int = 3, backoff: float = 0.5):
        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns: object) -> list:
        payload = json.dumps(
            {"prompts": list(prompts), "completions": list(completions), **columns}, ensure_ascii=False
        ).encode()
        body = self._post(payload)
        try:
            answer = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RewardError(f"POST {self.url} answered with invalid JSON ({e}): {_snippet(body, 200)}") from None
        if not isinstance(answer, dict) or "rewards" not in answer:
            raise RewardError(f"POST {self.url} answered without a 'rewards' key: {_snippet(body, 200)}")
        return answer["rewards"]

    def _post(self, payload: bytes) -> bytes:
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(
                self.url, data=payload, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.read()
            except urllib.error.HTTPError as e:
                error = f"HTTP {e.code}: {_snippet(e.read().decode(errors='replace'), 200)}"
                if e.code < 500:
                    raise RewardError(f"POST {self.url} failed with {error} (not retried)") from None
            except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets
                error = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if attempt < self.retries:
                logger.warning("POST %s failed (%s); retry %d/%d", self.url, error, attempt + 1, self.retries)
                time.sleep(self.backoff * 2**attempt)
        raise RewardError(f"POST {self.url} failed after {self.retries + 1} attempts, last: {error}")


# ---------------------------------------------------------------- loading


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


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 1
    while out in taken or out in _RESERVED_NAMES:
        k += 1
        out = f"{name}_{k}"
    taken.add(out)
    return out


# ---------------------------------------------------------------- calling and validation


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _call_with_timeout(name: str, fn: RewardFn, args: tuple, kwargs: dict, timeout: float) -> Any:
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


class Reward:
    """Weighted sum of reward sources, with every component kept for logging.

    ``reward(prompts, completions, **columns)`` -> ``{name: (B,) float32 per component, "score": (B,)
    float32 weighted sum}`` (+ ``"valid"``: ``(B,)`` bool with ``on_invalid="skip_sample"``), on
    ``self.device``. See the module doc for conventions, time limits and failure modes.
    """

    def __init__(
        self,
        sources: list[RewardSource],
        timeout: float = 60.0,
        on_invalid: str = "error",
        device: str | torch.device = "cpu",
    ):
        if on_invalid not in ON_INVALID:
            raise ValueError(f"on_invalid must be error or skip_sample, got {on_invalid!r}")
        self.sources, self.timeout, self.on_invalid = sources, timeout, on_invalid
        self.device = torch.device(device)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    def to(self, device: str | torch.device) -> Reward:
        """Where reward models run and where the returned tensors live."""
        self.device = torch.device(device)
        for scorer in self.model_scorers():
            scorer.to(self.device)
        return self

    def model_scorers(self) -> list[RewardModelScorer]:
        """The reward-model sources."""
        return [s.fn for s in self.sources if isinstance(s.fn, RewardModelScorer)]

    def modules(self) -> list[torch.nn.Module]:
        """The ``nn.Module`` of every reward model, in ``functions`` order."""
        return [s.model for s in self.model_scorers()]

    def _call_one(self, src: RewardSource, prompts: list[str], completions: list[str], columns: dict) -> Any:
        args = (list(completions),) if src.legacy else (list(prompts), list(completions))
        kwargs = {} if src.legacy else {k: v for k, v in columns.items() if src.columns is None or k in src.columns}
        if src.threaded:
            try:
                return _call_with_timeout(src.name, src.fn, args, kwargs, self.timeout)
            except RewardTimeoutError:
                raise
            except Exception as e:
                raise RewardError(f"reward function {src.name!r} raised {type(e).__name__}: {e}") from e
        try:
            return src.fn(*args, **kwargs)
        except Exception as e:
            raise RewardError(f"reward function {src.name!r} raised {type(e).__name__}: {e}") from e

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], **columns: Sequence
    ) -> dict[str, torch.Tensor]:
        prompts, completions = list(prompts), list(completions)
        n = len(completions)
        if len(prompts) != n:
            raise RewardError(f"reward called with {len(prompts)} prompts for {n} completions")
        for key, col in columns.items():
            if not hasattr(col, "__len__") or len(col) != n:
                raise RewardError(
                    f"reward column {key!r} must have one entry per sample ({n}), got {type(col).__name__} of length "
                    f"{len(col) if hasattr(col, '__len__') else '?'}"
                )
        out: dict[str, torch.Tensor] = {}
        errors: list[RewardError] = []
        score = torch.zeros(n, dtype=torch.float64)
        valid = torch.ones(n, dtype=torch.bool)
        for src in self.sources:  # all sources run even after a failure (see the module doc)
            try:
                values, problems = validate_rewards(
                    src.name, self._call_one(src, prompts, completions, columns), completions
                )
            except RewardError as e:
                errors.append(e)
                continue
            if problems and self.on_invalid == "error":
                errors.append(
                    RewardError(
                        problems[0] + (f" ({len(problems)} of {n} samples invalid)" if len(problems) > 1 else "")
                    )
                )
            elif problems:
                logger.warning(
                    "%s; %d of %d samples marked invalid (reward.on_invalid=skip_sample)", problems[0], len(problems), n
                )
            valid &= ~values.isnan()
            score += src.weight * values
            out[src.name] = values.float()
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise RewardError("\n".join(map(str, errors))) from errors[0]
        out["score"] = score.float()
        if self.on_invalid == "skip_sample":
            out["valid"] = valid
        return {k: v.to(self.device) for k, v in out.items()}


def build_reward(
    cfg: RewardConfig | Sequence[str | RewardFn],
    weights: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
    **overrides: Any,
) -> Reward:
    """A ``Reward`` from ``cfg`` (a ``RewardConfig``), or from a plain list of specs/callables
    (+ ``weights`` and any other ``RewardConfig`` fields as keyword ``overrides``).

    Raises ``ConfigError`` for invalid reward fields, ``RewardSpecError`` (also a ``ConfigError``) for a spec
    that cannot be loaded.
    """
    if not isinstance(cfg, RewardConfig):
        cfg = RewardConfig(functions=list(cfg), weights=None if weights is None else list(weights), **overrides)
    elif weights is not None or overrides:
        raise TypeError("build_reward(RewardConfig) takes no weights/overrides; set them on the config")
    cfg.validate()  # ConfigError naming the field
    taken: set[str] = set()
    ws = cfg.weights if cfg.weights is not None else [1.0] * len(cfg.functions)
    sources = []
    for spec, w in zip(cfg.functions, ws, strict=True):
        name, fn = load_reward_fn(spec, cfg)
        sources.append(RewardSource.create(_unique(name, taken), fn, float(w)))
    return Reward(sources, timeout=cfg.timeout, on_invalid=cfg.on_invalid).to(device)


# ---------------------------------------------------------------- post-processing on the global batch


class RewardNormalizer:
    """Post-processing of the *global* (gathered over all processes) scores, in this order:

    1. EOS penalty: ``score += no_eos_penalty`` where ``finished`` is False (response never produced EOS)
    2. scale:       ``score *= scale``
    3. normalise:   running stats updated with this batch's finite scores (Chan et al. parallel
                    merge, float64), then ``(score - mean) / max(std, std_floor)``; std is the
                    population std (divisor = count) of every score seen so far
    4. clip:        ``score.clamp(-clip, clip)``

    NaN scores (invalid samples under ``on_invalid=skip_sample``) stay NaN and do not enter the stats.
    Because it sees the gathered batch, the result does not depend on the number of processes.
    """

    def __init__(
        self,
        no_eos_penalty: float | None = None,
        scale: float = 1.0,
        normalize: bool = False,
        clip: float | None = None,
        std_floor: float = 1e-6,
    ):
        self.no_eos_penalty, self.scale, self.normalize, self.clip, self.std_floor = (
            no_eos_penalty,
            scale,
            normalize,
            clip,
            std_floor,
        )
        self.count, self.mean, self.m2 = 0, 0.0, 0.0  # python floats are float64

    @classmethod
    def from_config(cls, cfg: RewardConfig) -> RewardNormalizer:
        return cls(cfg.no_eos_penalty, cfg.scale, cfg.normalize, cfg.clip)

    @property
    def var(self) -> float:
        return self.m2 / self.count if self.count else 1.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def update(self, values: torch.Tensor) -> None:
        """Merge a batch into the running (count, mean, M2) -- Chan, Golub & LeVeque (1979), pairwise update."""
        x = values.detach().double().flatten()
        x = x[torch.isfinite(x)]
        n_b = x.numel()
        if n_b == 0:
            return
        mean_b = x.mean().item()
        m2_b = ((x - mean_b) ** 2).sum().item()
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta**2 * self.count * n_b / n
        self.count = n

    def __call__(self, scores: torch.Tensor, finished: torch.Tensor | None = None) -> torch.Tensor:
        """``scores``: ``(B,)`` global scores; ``finished``: ``(B,)`` bool, True where the response has EOS."""
        x = scores.detach().double()
        if self.no_eos_penalty is not None:
            if finished is None or finished.shape != scores.shape:
                raise ValueError(
                    f"reward.no_eos_penalty needs finished of shape {tuple(scores.shape)}, got "
                    f"{None if finished is None else tuple(finished.shape)}"
                )
            x = x + self.no_eos_penalty * (~finished.to(device=x.device, dtype=torch.bool)).double()
        x = x * self.scale
        if self.normalize:
            self.update(x)
            x = (x - self.mean) / max(self.std, self.std_floor)
        if self.clip is not None:
            x = x.clamp(-self.clip, self.clip)
        return x.to(scores.dtype)

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        missing = {"count", "mean", "m2"} - set(state)
        if missing:
            raise KeyError(f"RewardNormalizer state is missing {sorted(missing)}")
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])
