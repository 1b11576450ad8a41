"""Typed dataclass configs from YAML / dicts: unknown keys are errors that list the known ones.

Used by every YAML config of the project (encoder ensembles, and the curriculum and pre-training recipes).
Nested dataclasses, `dict[str, Dataclass]` and `list[Dataclass]` fields are built recursively; a `Literal` field
rejects a value outside its choices.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path


def _build(tp, value, where: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value, where)
    if origin is typing.Literal and value not in args:
        raise ValueError(f"{where} = {value!r}: expected one of {list(args)}.")
    if origin is dict and args and isinstance(value, dict):
        return {k: _build(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin is list and args and isinstance(value, list):
        return [_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for option in args:
            if option is type(None):
                if value is None:
                    return None
                continue
            if dataclasses.is_dataclass(option) and isinstance(value, dict):
                return from_dict(option, value, where)
            if typing.get_origin(option) is typing.Literal:
                return _build(option, value, where)
    return value


def from_dict(cls, data: dict, where: str | None = None):
    """Instantiate dataclass `cls` from `data`, recursively; raise ValueError naming unknown or missing keys."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping of settings, got {type(data).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(fields)}.")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _build(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field without a value
        raise ValueError(f"{where}: {err}") from None


def load_yaml(cls, path: str | Path):
    """Read a YAML file into dataclass `cls` (errors name the file)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist.")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    return from_dict(cls, data, where=str(path))


class YamlConfig:
    """Mixin for a dataclass config: `Cls.from_yaml(path)` and `Cls.from_dict(mapping)`, both strict."""

    @classmethod
    def from_yaml(cls, path):
        return load_yaml(cls, path)

    @classmethod
    def from_dict(cls, data: dict):
        return from_dict(cls, data)
