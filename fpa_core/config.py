"""Typed configs: dataclasses built from plain dicts (YAML), every bad field named at once.

A config dataclass may define ``validate(self) -> list[str]`` for checks across fields; it
returns messages of the form ``"field: what is wrong"``, and the loader prefixes the path.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be used; ``errors`` lists every problem, one per field."""

    def __init__(self, errors: list[str], source: str = "config"):
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"invalid {source} ({len(self.errors)} problem{'s' * (len(self.errors) != 1)}):\n{lines}")


def from_dict(cls: type[T], data: dict[str, Any] | None, source: str = "config") -> T:
    """Build ``cls`` from ``data``; raise ConfigError naming every bad field."""
    errors: list[str] = []
    obj = _build(cls, data or {}, "", errors)
    if errors:
        raise ConfigError(errors, source)
    return obj


def check(config: T, section: str) -> T:
    """``config`` itself when its ``validate()`` finds nothing, else ConfigError naming ``section.field``."""
    errors = config.validate()
    if errors:
        raise ConfigError([f"{section}.{e}" for e in errors], f"{section} config")
    return config


def read_mapping(text: str, where: str, source: str, expected: str = "field: value") -> dict[str, Any]:
    """A YAML document that must be a mapping (empty: {}); ConfigError naming ``where`` otherwise."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError([f"{where}: not valid YAML ({e})"], source) from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError([f"{where}: the top level must be a mapping of {expected}"], source)
    return data or {}


def load_yaml(cls: type[T], path: str | Path) -> T:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"], str(path)) from None
    return from_dict(cls, read_mapping(text, str(path), str(path)), str(path))


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def _build(cls: type, data: Any, prefix: str, errors: list[str]) -> Any:
    if not isinstance(data, dict):
        errors.append(f"{prefix.rstrip('.') or cls.__name__}: expected a mapping, got {_describe(data)}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            errors.append(f"{prefix}{key}: unknown field; known fields are {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    bad: set[str] = set()
    for name in fields:
        if name in data:
            n_errors = len(errors)
            value = _coerce(hints[name], data[name], f"{prefix}{name}", errors)
            if len(errors) > n_errors:
                bad.add(name)  # leave the default in place, so that the checks across fields can still run
            else:
                kwargs[name] = value
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    # Checks across fields run on the good values and defaults in place of bad scalars; a bad section
    # (a nested config) has named its own problems, and checks against its defaults would mislead.
    if validate is not None and not any(dataclasses.is_dataclass(hints[name]) for name in bad):
        errors.extend(f"{prefix}{m}" for m in validate() if m.split(":", 1)[0].split(".")[0] not in bad)
    return None if bad else obj


def _coerce(annotation: Any, value: Any, path: str, errors: list[str]) -> Any:
    origin, args = get_origin(annotation), get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, f"{path}.", errors)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, path, errors)
    if origin is Literal:
        if value not in args:
            errors.append(f"{path}: {value!r} is not allowed; choose one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            errors.append(f"{path}: expected a list, got {_describe(value)}")
            return value
        return origin(_coerce(args[0], v, f"{path}[{i}]", errors) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping, got {_describe(value)}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            errors.append(f"{path}: expected true or false, got {_describe(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{path}: expected an integer, got {_describe(value)}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{path}: expected a number, got {_describe(value)}")
            return value
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            errors.append(f"{path}: expected a string, got {_describe(value)}")
        return value
    if annotation is Any:
        return value
    raise TypeError(f"config field {path} has an unsupported type {annotation!r}")


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


# -- dotted paths: "model.d_hidden" names the field d_hidden of the section model --------------------------

def field_paths(cls: type) -> list[str]:
    """The dotted path of every leaf field of a config dataclass, e.g. ``model.d_hidden``."""
    hints = typing.get_type_hints(cls)
    paths = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            paths += [f"{f.name}.{path}" for path in field_paths(hints[f.name])]
        else:
            paths.append(f.name)
    return paths


def nested(dotted: dict[str, Any], source: str = "dotted paths") -> dict[str, Any]:
    """``{"model.d_hidden": 2}`` -> ``{"model": {"d_hidden": 2}}``; ConfigError where two paths collide."""
    out: dict[str, Any] = {}
    errors = []
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                errors.append(f"{key}: {part} is already set to a value; drop one of the two")
                break
        else:
            if isinstance(node.get(leaf), dict):
                errors.append(f"{key}: already set by a longer path; drop one of the two")
            else:
                node[leaf] = value
    if errors:
        raise ConfigError(errors, source)
    return out


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """The inverse of ``nested``: a nested mapping or a config dataclass -> dotted path -> value."""
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=1e-4", "model.rule=oja"]`` -> a nested mapping; values are parsed as YAML scalars."""
    dotted: dict[str, Any] = {}
    errors = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            errors.append(f"--set {item!r}: expected KEY=VALUE, e.g. model.d_hidden=2048")
            continue
        try:
            dotted[key] = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            dotted[key] = raw
    if errors:
        raise ConfigError(errors, "overrides")
    return nested(dotted, "overrides")


def set_flags(path: str | Path) -> list[str]:
    """A YAML mapping of overrides as a command line's ``--set KEY=VALUE`` flags (the inverse of
    ``parse_overrides``), e.g. a test's tiny run for ``python -m fpa_core.train``."""
    data = read_mapping(Path(path).read_text(), str(path), str(path))
    return [flag for key, value in flatten(data).items() for flag in ("--set", f"{key}={json.dumps(value)}")]


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into a copy of ``base``."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
