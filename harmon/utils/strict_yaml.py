"""Typed dataclass configs from YAML files or named presets, with `key.sub=value` overrides (`--set`): unknown
keys and wrong types are refused with the dotted key named."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """A config value or key is not accepted; the message names the key and what is expected."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _unknown_key(key: str, known: Sequence[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{where}{key}: unknown key{hint}; known keys: {', '.join(known)}")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """`value` checked against the type annotation `tp` (dataclasses recursively); `where` is the dotted key."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{where}: {value!r} is none of {' | '.join(_type_name(a) for a in args)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple, Sequence):
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}: {value!r}")
            return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        items = [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        key_tp, value_tp = args or (Any, Any)
        return {coerce(k, key_tp, f"{where}"): coerce(v, value_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):  # PyYAML reads "1e-5" as a string
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported config type {_type_name(tp)}")


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass `cls` from a mapping; every key must be a field and every value of the field's type."""
    label = where or cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f"{label}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    prefix = f"{where}." if where else ""
    for key in data:
        if key not in fields:
            raise _unknown_key(str(key), list(fields), prefix)
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{label}: missing required key(s) {', '.join(prefix + m for m in missing)}")
    values = {k: coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{label}: {err}") from err


def to_dict(config: Any) -> Any:
    """Plain YAML-ready data (tuples become lists)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, Mapping):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def set_override(data: dict[str, Any], assignment: str) -> None:
    """Apply `a.b.c=value` (value parsed as YAML) to nested plain data in place; a number picks a list item."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {assignment!r} must look like key.subkey=value")
    parts: list[Any] = [int(p) if p.isdigit() else p for p in key.split(".")]
    node: Any = data
    for i, part in enumerate(parts):
        where = ".".join(map(str, parts[: i + 1]))
        if isinstance(node, list) != isinstance(part, int):
            raise ConfigError(f"override {assignment!r}: {where} does not exist "
                              f"({'a list needs an item number' if isinstance(node, list) else 'not a list'})")
        if isinstance(part, int) and part >= len(node):
            raise ConfigError(f"override {assignment!r}: {where} does not exist (the list has {len(node)} items)")
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"override {assignment!r}: {where} is not inside a section")
        if i == len(parts) - 1:
            node[part] = parse_yaml(text, f"override {assignment!r}")
        else:
            node = node[part] if isinstance(part, int) else node.setdefault(part, {})


def parse_yaml(text: str, where: str) -> Any:
    """`yaml.safe_load(text)`; a syntax error is a one-line ConfigError naming `where`, the line and column."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(part) for part in (getattr(err, "context", None), getattr(err, "problem", None))
                           if part) or str(err).splitlines()[0]
        raise ConfigError(f"{where}{at}: YAML syntax error ({problem}); fix the YAML there") from err


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    data = parse_yaml(path.read_text(), str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def diff(a: Any, b: Any, where: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain-data trees."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        keys = sorted(set(a) | set(b), key=str)
        return [d for k in keys for d in diff(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))]
    return [] if a == b else [where or "<root>"]


def list_presets(presets: Path, prefix: str = "") -> list[str]:
    """The preset names in the folder `presets`: `<prefix><name>.yaml` files."""
    return sorted(p.stem.removeprefix(prefix) for p in presets.glob(f"{prefix}*.yaml"))


def preset_file(source: str | os.PathLike, presets: Path, prefix: str = "") -> Path:
    """`source` itself when it is a YAML path or an existing file, else the preset `presets/<prefix><source>.yaml`."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return path
    named = presets / f"{prefix}{source}.yaml"
    if not named.is_file():
        known = ", ".join(list_presets(presets, prefix))
        if prefix:
            raise ConfigError(f"{str(source)!r} is neither a {prefix.rstrip('-')} preset ({known}) nor a YAML file")
        raise ConfigError(f"{str(source)!r} is neither a YAML file nor a preset; presets: {known}")
    return named


def load_typed(cls: type[T], source: str | os.PathLike, presets: Path, prefix: str = "",
               overrides: Sequence[str] = ()) -> T:
    """A `cls` from a YAML path or a preset name (see `preset_file`), with `key.sub=value` overrides applied."""
    data = read_yaml(preset_file(source, presets, prefix))
    for assignment in overrides:
        set_override(data, assignment)
    return from_dict(cls, data)
