"""Typed dataclass configs from YAML / dicts, checked at load time so a bad value never reaches training.

Used by every YAML config of the project (encoder ensembles, and the curriculum and pre-training recipes):
- an unknown key is an error that lists the known ones; nested dataclasses, `dict[str, X]` and `list[X]` fields are
  built recursively;
- every value is checked against its field's type (`int`, `float`, `str`, `bool`, `Literal[...]`, lists, mappings),
  and against bounds given with `bounded(...)`; the error names the file, the key path, the value and what is
  expected, e.g. `curriculum.yaml: stages[0].batch_size = 2.5: expected an integer >= 1`;
- YAML 1.1 reads `1e-4` (no dot) as a string: a string that spells a number is read as the number meant;
- fields marked `path_field()` hold file or folder paths: a relative path resolves against the folder of the YAML
  that names it (not the working directory), so a config runs from anywhere.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from pathlib import Path

_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def bounded(default=dataclasses.MISSING, *, ge=None, gt=None, le=None):
    """A numeric field with bounds checked at load time: `batch_size: int = bounded(4, ge=1)`."""
    return dataclasses.field(default=default, metadata={"ge": ge, "gt": gt, "le": le})


def path_field(default=None, *, keep: tuple[str, ...] = ()):
    """A path field: relative values resolve against the YAML's folder; values in `keep` (e.g. "default") stay."""
    return dataclasses.field(default=default, metadata={"path": True, "keep": keep})


def describe(tp) -> str:
    """A type in words, for error messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        options = [describe(a) for a in args if a is not type(None)]
        return " or ".join(options) + (" or null" if type(None) in args else "")
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if origin is list or tp is list:
        return f"a list (each {describe(args[0])})" if args else "a list"
    if origin is dict or tp is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, getattr(tp, "__name__", str(tp)))


def _scalar(tp, value, where: str):
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads `1e-4` as a string
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value  # typing.Any and other annotations are not checked
    raise ValueError(f"{where} = {value!r}: expected {describe(tp)}.")


def _key(where: str, name: str) -> str:
    """The path of a key: `file.yaml: stages[0].lr` (a file is followed by ": ", keys are joined by dots)."""
    return f"{where} {name}" if where.endswith(":") else f"{where}.{name}"


def _build(tp, value, where: str, base: Path | None):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ValueError(f"{where} is null: expected {describe(tp)}.")
        options = [a for a in args if a is not type(None)]
        for option in options:  # a mapping goes to the dataclass option, whose errors are the precise ones
            if dataclasses.is_dataclass(option) and isinstance(value, dict):
                return from_dict(option, value, where, base)
        for option in options:
            try:
                return _build(option, value, where, base)
            except ValueError:
                continue
        raise ValueError(f"{where} = {value!r}: expected {describe(tp)}.")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, base)
    if origin is typing.Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
            raise ValueError(f"{where} = {value!r}: expected one of {list(args)}.")
        return value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} = {value!r}: expected {describe(tp)}.")
        return {k: _build(args[1], v, _key(where, k), base) for k, v in value.items()} if args else dict(value)
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise ValueError(f"{where} = {value!r}: expected {describe(tp)}.")
        return [_build(args[0], v, f"{where}[{i}]", base) for i, v in enumerate(value)] if args else list(value)
    return _scalar(tp, value, where)


def _check_bounds(value, meta, where: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    for key, ok, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                          ("le", lambda v, b: v <= b, "<=")):
        bound = meta.get(key)
        if bound is not None and not ok(value, bound):
            kind = "an integer" if isinstance(value, int) else "a number"
            raise ValueError(f"{where} = {value!r}: expected {kind} {word} {bound}.")


def _resolve(value, meta, base: Path | None):
    if not meta.get("path") or base is None or not isinstance(value, str) or value in meta.get("keep", ()):
        return value
    path = Path(value).expanduser()
    return value if path.is_absolute() else os.path.normpath(base / path)


def from_dict(cls, data: dict, where: str | None = None, base: str | Path | None = None):
    """Instantiate dataclass `cls` from `data`, recursively; raise ValueError naming the key path and the problem.

    `base`: the folder that relative path fields resolve against (the YAML's folder); None leaves them as given.
    """
    where = where or f"{cls.__name__}:"
    here = where.rstrip(":")  # the file, or the key path of this mapping
    base = Path(base) if base is not None else None
    if not isinstance(data, dict):
        raise ValueError(f"{here} = {data!r}: expected a mapping of settings.")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{here}: unknown key(s) {unknown}; known keys: {sorted(fields)}.")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        meta = fields[name].metadata
        built = _build(hints[name], value, _key(where, name), base)
        _check_bounds(built, meta, _key(where, name))
        kwargs[name] = _resolve(built, meta, base)
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field without a value
        raise ValueError(f"{here}: {err}") from None
    except ValueError as err:  # a __post_init__ check across fields
        raise ValueError(f"{here}: {err}") from None


def load_yaml(cls, path: str | Path):
    """Read a YAML file into dataclass `cls` (errors name the file; relative paths resolve against its folder)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        raise ValueError(f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML ({err.problem}).") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid YAML ({err}).") from None
    return from_dict(cls, data if data is not None else {}, where=f"{path}:", base=path.resolve().parent)


class YamlConfig:
    """Mixin for a dataclass config: `Cls.from_yaml(path)` and `Cls.from_dict(mapping)`, both strict."""

    @classmethod
    def from_yaml(cls, path):
        return load_yaml(cls, path)

    @classmethod
    def from_dict(cls, data: dict, base: str | Path | None = None):
        return from_dict(cls, data, base=base)
