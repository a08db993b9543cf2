"""Loading a :class:`~.schema.Config`: a YAML file, then ``--section.field value`` overrides.

Values are parsed as YAML; each is checked against its field's type, and an unknown key gets the
closest known names as a suggestion.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .fields import ConfigError, field_choices
from .schema import Config, is_section, leaf_fields, walk


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else f" Valid: {', '.join(sorted(options))}."


def _coerce(path: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the annotation ``hint``; ints are accepted for floats."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(path, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-5" as a string
            return float(value)
        except ValueError:
            pass
    base = origin or hint
    if base is list and isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: expected {getattr(base, '__name__', base)}, got {type(value).__name__} {value!r}")
    return value


def _apply(obj: Any, data: dict, prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            what = "config section or key" if not prefix else "key"
            raise ConfigError(f"unknown {what} {path!r}.{_suggest(str(key), list(fields))}")
        if is_section(fields[key], hints):
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"section {path!r} must be a mapping, got {value!r}")
            _apply(getattr(obj, key), value, f"{path}.")
        else:
            setattr(obj, key, _coerce(path, value, hints[key]))


def from_dict(data: dict, base: Config | None = None) -> Config:
    """Apply a nested dict onto ``base`` (default: defaults), with type checks and key suggestions."""
    cfg = base or Config()
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(data).__name__}")
    _apply(cfg, data, "")
    return cfg


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    return data or {}


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Distributed PPO for causal language models. Values: YAML file, then --section.field overrides.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", default=None, help="YAML run config (sections as below)")
    defaults = dict(walk(Config()))
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, f, _ in leaf_fields():
        group_name = name.rpartition(".")[0] or "run"
        group = groups.get(group_name) or groups.setdefault(group_name, parser.add_argument_group(group_name))
        choices = field_choices(f)
        doc = f.metadata.get("doc", "") + (f" (one of: {', '.join(choices)})" if choices else "")
        group.add_argument(
            f"--{name}",
            dest=name,
            default=argparse.SUPPRESS,
            metavar="VALUE",
            help=f"{doc} (default: {defaults[name]!r})",
        )
    return parser


def parse_args(argv: list[str] | None = None) -> Config:
    """YAML file (``--config``) then ``--section.field value`` overrides; values parsed as YAML."""
    parser = build_arg_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        options = [a.option_strings[0] for a in parser._actions if a.option_strings]
        raise ConfigError(f"unknown argument {unknown[0]!r}.{_suggest(unknown[0].split('=')[0], options)}")
    overrides = {k: v for k, v in vars(args).items() if k != "config"}
    cfg = from_dict(load_yaml(args.config)) if args.config else Config()
    hints = {name: hint for name, _, hint in leaf_fields()}
    nested: dict[str, Any] = {}
    for key, raw in overrides.items():
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (int, float, bool)) and hints[key] is str:
            value = raw
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return from_dict(nested, cfg)
