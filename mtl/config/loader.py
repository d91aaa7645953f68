"""Loading YAML into typed dataclasses: ``extends``, ``--set`` overrides, type checks.

A config file may name a parent with ``extends: <file>`` (relative to its own folder); the
child is deep-merged over the parent. Every key is checked against the dataclass it fills, so a
misspelt key or a value of the wrong type fails with an error naming the dotted key path.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message names the key."""


def parse_typed(cls: Any, raw: dict[str, Any]) -> Any:
    """Build the dataclass ``cls`` from a plain mapping (e.g. read back from JSON), with the same checks."""
    return _convert(cls, raw, "")


def load_typed(
    cls: Any,
    path: Optional[str | Path] = None,
    overrides: Optional[list[str]] = None,
    file_relative: tuple[str, ...] = (),
) -> Any:
    """Load a YAML file (following ``extends``) into the dataclass ``cls``, with overrides.

    The same rules as the main config: unknown keys and wrong types fail naming the key. The
    top-level keys in ``file_relative`` hold paths: a relative one is resolved from the folder of
    the file that sets it (an override's, from the working folder), so a config kept anywhere can
    extend the project's and still find the files the project's names.
    """
    raw: dict[str, Any] = _read_with_parents(Path(path), (), file_relative) if path else {}
    for override in overrides or []:
        _apply_override(raw, override, cls)
    return _convert(cls, raw, "")


def _read_with_parents(path: Path, seen: tuple[Path, ...], file_relative: tuple[str, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config files extend each other in a cycle: {' -> '.join(map(str, seen + (path,)))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    for key in file_relative:
        value = data.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute() and "://" not in value:
            data[key] = str((path.parent / value).resolve())
    parent = data.pop("extends", None)
    if parent is None:
        return data
    return _deep_merge(_read_with_parents(path.parent / parent, seen + (path,), file_relative), data)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(raw: dict[str, Any], override: str, root: Any) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like key.path=value")
    parts = _split_key(key.strip(), root)
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(text) if text.strip() else None


def _split_key(key: str, root: Any) -> list[str]:
    """Split a dotted key by the config's structure: below a string-to-scalar mapping (such as
    spark.extra) the rest of the key is one mapping key, dots and all."""
    parts = key.split(".")
    tp: Any = root
    for i, part in enumerate(parts):
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            if part not in hints:
                return parts  # unknown key: reported with its full path when converting
            tp = hints[part]
            continue
        if typing.get_origin(tp) is dict:
            value_type = typing.get_args(tp)[1]
            if not dataclasses.is_dataclass(value_type):
                return parts[:i] + [".".join(parts[i:])]
            tp = value_type
            continue
        return parts
    return parts


def _convert(tp: Any, value: Any, path: str) -> Any:
    where = path or "<top level>"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, path)
    if value is None:
        raise ConfigError(f"{where}: a value is required (got null)")
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return {str(k): _convert(args[1], v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if tp is str:
        # YAML reads unquoted 2017-11-25 as a date; it is meant as text here.
        if isinstance(value, (dt.date, dt.datetime)):
            return value.isoformat()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    raise TypeError(f"unsupported config type {tp!r} at {where}")


def _convert_dataclass(cls: Any, value: Any, path: str) -> Any:
    where = path or "<top level>"
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a section (mapping), got {type(value).__name__} {value!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in value:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{_join(path, key)}'{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing config key '{_join(path, name)}'")
    return cls(**kwargs)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)
