"""The errors of reward sources; every message names the function (and the sample) at fault."""

from __future__ import annotations

from ..config import ConfigError


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
