"""The building blocks of the config tree: the error type, documented fields and exact division.

Nothing here imports the schema, so the stage registry (:mod:`.stages`) and the schema
(:mod:`.schema`) can both use it without importing each other.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import field
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field(s) and value(s)."""


def doc_field(default: Any, doc: str, choices: typing.Callable[[], typing.Iterable[str]] | None = None) -> Any:
    """A dataclass field with a one-line doc shown by ``train.py --help``.

    ``choices`` returns the allowed values from the registry that implements them (imported lazily,
    so that loading a config stays light); ``validate`` and ``--help`` both read it.
    """
    metadata = {"doc": doc, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=metadata)
    if dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: dataclasses.replace(d), metadata=metadata)
    return field(default=default, metadata=metadata)


def section(cls: type, doc: str) -> Any:
    """A nested section (``model.lora`` ...): its fields are ``--model.lora.<field>`` options."""
    return field(default_factory=cls, metadata={"doc": doc, "choices": None})


def check(ok: bool, message: str) -> None:
    """Raise a ConfigError with ``message`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def field_choices(f: dataclasses.Field) -> list[str] | None:
    """The values a field declared with ``choices`` accepts (read from its registry), else None."""
    choices = f.metadata.get("choices")
    return None if choices is None else list(choices())


def exact_div(a: int, b: int, what: str) -> int:
    """``a // b``, or a ConfigError with ``what`` (which names both numbers) when it does not divide."""
    if b <= 0 or a % b != 0:
        raise ConfigError(what)
    return a // b
