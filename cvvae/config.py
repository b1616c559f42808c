"""YAML configs as typed dataclasses, with ``section.key=value`` overrides: one loader for every trainer.

Each config is a (nested) dataclass whose fields are annotated ``int``, ``float``, ``str``, ``bool``,
``list[...]``, ``dict`` or ``X | None``; values are checked and converted against those types, unknown
keys are refused, and the dataclass's own ``validate()`` (when it has one) runs last.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import TypeVar

import yaml

from .errors import InputError

T = TypeVar("T")


class ConfigError(InputError):
    """A configuration file, key or value that cannot be used."""


MAX_CONFIG_BYTES = 1_000_000
MAX_DEPTH = 20  # nested mappings and lists


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without aliases (no "billion laughs") and with a nesting limit (no RecursionError)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ConfigError(
                f"YAML aliases (*name) are not accepted in configs (line {mark.line + 1}); write values out"
            )
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise ConfigError(f"the YAML is nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_yaml(text: str):
    """``text`` parsed with :class:`BoundedLoader`: bounded in size, depth and expansion."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"the YAML is {len(text):,} characters; configs are at most {MAX_CONFIG_BYTES:,}")
    return yaml.load(text, Loader=BoundedLoader)  # noqa: S506 - a SafeLoader subclass


def _coerce(value, tp, key: str):
    """Check/convert ``value`` to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(value, args[0], key)
    if origin is list or tp is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        inner = typing.get_args(tp)
        return [_coerce(v, inner[0], key) for v in value] if inner else list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if int(value) != value:
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key} must be a number (finite), got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, bool):  # YAML reads a bare no/yes as a boolean
            return "yes" if value else "no"
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value


def build(cls: type[T], data: dict, prefix: str = "") -> T:
    """Instantiate the dataclass ``cls`` from a nested mapping, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; known: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    return cls(**kwargs)


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``key=value`` / ``section.key=value`` strings (values parsed as YAML) onto ``data``."""
    for item in overrides or ():
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"override {item!r} must look like key=value or section.key=value")
        try:
            value = parse_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"cannot parse the value of override {item!r}: {err}") from err
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a config section")
        node[parts[-1]] = value
    return data


def read_yaml(path: str | Path | None) -> dict:
    """The mapping in a YAML file (empty for ``None``); ConfigError for a missing or invalid file."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path} is larger than the {MAX_CONFIG_BYTES:,} bytes a config may have")
        data = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Read ``path`` (or start from the defaults), apply ``overrides``, build ``cls`` and validate it."""
    config = build(cls, apply_overrides(read_yaml(path), list(overrides or ())))
    validate = getattr(config, "validate", None)
    return validate() or config if callable(validate) else config


def to_dict(config) -> dict:
    return dataclasses.asdict(config)
