"""YAML, overrides and diffs: `load_config` applies a YAML file and dotted command-line overrides on top of a
preset and validates the result; `config_from_dict` rebuilds a saved config, `config_diff` compares two, and
`field_docs` lists every field with its default and docstring (`dapo config --fields`).
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import itertools
import json
import textwrap
import types
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from dapo.config.presets import preset
from dapo.config.schema import Config, ConfigError


def _coerce(value: Any, annotation: Any, path: str) -> Any:
    """Convert a YAML/override value to the field's declared type, or raise ConfigError naming the field."""
    origin, args = get_origin(annotation), get_args(annotation)
    if value is None:
        if type(None) in args or annotation is Any:
            return None
        raise ConfigError(f"{path} = null: this field cannot be null")
    if origin in (list,):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path} = {value!r}: expected a list")
        return [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{path} = {value!r}: expected a list of {len(args)} values")
        return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if args and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], path)
    if origin in (types.UnionType, Union):  # X | Y: the first alternative the value fits
        for alternative in args:
            with contextlib.suppress(ConfigError):
                return _coerce(value, alternative, path)
        names = " or ".join(getattr(a, "__name__", str(a)) for a in args)
        raise ConfigError(f"{path} = {value!r}: expected {names}")
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} = {value!r}: expected true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} = {value!r}: expected an integer")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-5 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path} = {value!r}: expected a number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} = {value!r}: expected a string")
        return value
    return value


def _apply_mapping(target: Any, values: Mapping[str, Any], prefix: str) -> None:
    hints = get_type_hints(type(target))
    known = {f.name for f in fields(target)}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"unknown field {path!r}; {prefix or 'top level '}fields are: {', '.join(sorted(known))}")
        current = getattr(target, key)
        if is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path} is a section; give a mapping of its fields, not {value!r}")
            _apply_mapping(current, value, f"{path}.")
        else:
            setattr(target, key, _coerce(value, hints[key], path))


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply `section.field=value` overrides; values are parsed as YAML (`0.28`, `true`, `null`, `[a, b]`)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        dotted, raw = item.split("=", 1)
        value: Any = yaml.safe_load(raw) if raw.strip() else ""
        nested: dict[str, Any] = {}
        cursor = nested
        keys = dotted.strip().split(".")
        for key in keys[:-1]:
            cursor = cursor.setdefault(key, {})
        cursor[keys[-1]] = value
        _apply_mapping(config, nested, "")
    return config


def load_config(
    preset_name: str = "cpu_dapo", yaml_path: str | Path | None = None, overrides: list[str] | None = None
) -> Config:
    """Preset, then YAML file, then command-line overrides; validated."""
    config = preset(preset_name)
    if yaml_path is not None:
        text = Path(yaml_path).read_text()
        values = yaml.safe_load(text) or {}
        if not isinstance(values, Mapping):
            raise ConfigError(f"{yaml_path}: the top level must be a mapping of sections")
        _apply_mapping(config, values, "")
    apply_overrides(config, overrides or [])
    return config.validate()


def config_from_dict(values: Mapping[str, Any]) -> Config:
    """Rebuild a Config saved with `to_dict` (e.g. from a checkpoint); unknown fields are errors."""
    config = Config()
    _apply_mapping(config, values, "")
    return config


def config_diff(
    old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "", defaults: Mapping[str, Any] | None = None
) -> list[str]:
    """Human-readable differences between two `to_dict()` trees: ["actor.lr: 1e-05 -> 2e-05", ...].

    With `defaults` (a `to_dict()` tree of the schema's defaults), a field absent from `old` (an older version
    wrote it, before the field existed) reads as its default: a field added since, left at the default that keeps
    the old behaviour, is no difference."""
    lines = []
    defaults = defaults or {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, defaults.get(key, "<absent>")), new.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            below = defaults.get(key)
            lines += config_diff(a, b, f"{prefix}{key}.", below if isinstance(below, Mapping) else None)
        elif json.dumps(a) != json.dumps(b):
            lines.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return lines


def field_docs(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, docstring) of every field, read from the attribute docstrings in schema.py."""
    source = textwrap.dedent(inspect.getsource(cls))
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, following in itertools.pairwise(body):
        is_field = isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        if is_field and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            docs[node.target.id] = " ".join(str(following.value.value).split())
    rows = []
    instance = cls()
    for f in fields(cls):
        value = getattr(instance, f.name)
        if is_dataclass(value):
            rows += field_docs(type(value), f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", repr(value), docs.get(f.name, "")))
    return rows
