"""Typed dataclass configs from YAML / dicts, checked at load time so a bad value never reaches training.

Used by every YAML config of the project (encoder ensembles, and the curriculum and pre-training recipes):
- an unknown key is an error that lists the known ones; nested dataclasses, `dict[str, X]` and `list[X]` fields are
  built recursively;
- every value is checked against its field's type (`int`, `float`, `str`, `bool`, `Literal[...]`, lists, mappings),
  and against bounds given with `bounded(...)`; the error names the file, the key path, the value and what is
  expected, e.g. `curriculum.yaml: stages[0].batch_size = 2.5: expected an integer >= 1`;
- YAML 1.1 reads `1e-4` (no dot) as a string: a string that spells a number is read as the number meant;
- fields marked `path_field()` hold file or folder paths: a relative path resolves against the folder of the YAML
  that names it (not the working directory), so a config runs from anywhere; `pal:NAME` names a config shipped with
  the package (`pal:deepspeed/zero2.json`; `pal configs list` shows them), whose own relative paths name the user's
  files from the working directory (its folder is inside the installed package); in a config built in code a relative
  path means the working directory, and `with_absolute_paths` makes that explicit before the config is written to a
  file that another process reads back (a launcher's ranks);
- a variant names its parent: `base: lal.yaml` (a YAML in the same folder) and writes only what differs. A nested
  config section (a dataclass field: `model`, `model.encoders` inline) merges key by key into the base's; any other
  value (a number, a string, a list such as `stages`, a free-form mapping such as `model.connector`) replaces the
  base's whole, so a variant always reads as what it sets.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
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
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


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


PACKAGED = "pal:"  # the prefix of a config shipped inside the package, e.g. pal:curriculum/demo-full.yaml


def packaged_configs() -> Path:
    """The folder of the configs shipped with the package (package data, wherever pal is installed)."""
    return Path(str(importlib.resources.files("pal") / "configs"))


def config_path(value: str | Path) -> Path:
    """A config file as a user names it: a path, or `pal:NAME` for NAME among the configs shipped with pal."""
    text = str(value)
    if not text.startswith(PACKAGED):
        return Path(text).expanduser()
    path = packaged_configs() / text.removeprefix(PACKAGED)
    if not path.is_file():
        raise FileNotFoundError(f"{text}: no config of that name ships with pal; `pal configs list` shows them.")
    return path


def _resolve(value, meta, base: Path | None):
    if not meta.get("path") or not isinstance(value, str) or value in meta.get("keep", ()):
        return value
    if value.startswith(PACKAGED):
        return str(config_path(value))
    if base is None:
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


def with_absolute_paths(config):
    """A copy of dataclass `config` whose relative path fields (at any depth) are absolute, against the working
    directory: what they mean in memory, and what they still mean once written to a file and read back elsewhere."""
    config = copy.deepcopy(config)

    def walk(value):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                inner = getattr(value, f.name)
                if f.metadata.get("path") and isinstance(inner, str) and inner not in f.metadata.get("keep", ()):
                    path = config_path(inner) if inner.startswith(PACKAGED) else os.path.expanduser(inner)
                    setattr(value, f.name, os.path.abspath(path))
                else:
                    walk(inner)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(config)
    return config


BASE_KEY = "base"  # a YAML variant's parent, by file name (see the module docstring)


def _read_yaml(path: Path):
    import yaml

    if not path.is_file():
        shipped = (packaged_configs() / path).is_file() and not path.is_absolute()
        hint = f" (a config shipped with pal is named pal:{path.as_posix()})" if shipped else ""
        raise FileNotFoundError(f"config file {path} does not exist{hint}.")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        raise ValueError(f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML ({err.problem}).") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid YAML ({err}).") from None
    return data if data is not None else {}


def _config_type(tp):
    """The dataclass a field holds (alone or as one option of a union), or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), None)
    return None


def merge_onto(cls, base: dict, variant: dict) -> dict:
    """`variant` written over `base` for dataclass `cls`: a key whose field is a nested config merges recursively;
    every other value replaces the base's."""
    hints = typing.get_type_hints(cls)
    merged = dict(base)
    for key, value in variant.items():
        inner = _config_type(hints.get(key))
        if inner is not None and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_onto(inner, merged[key], value)
        else:
            merged[key] = value
    return merged


def _with_base(cls, path: Path, data, chain: tuple[Path, ...] = ()):
    """`data` read from `path`, with its `base:` chain merged under it."""
    fields = {f.name for f in dataclasses.fields(cls)}
    if not isinstance(data, dict) or BASE_KEY not in data or BASE_KEY in fields:
        return data
    data = dict(data)
    name = data.pop(BASE_KEY)
    if not isinstance(name, str) or Path(name).name != name:
        raise ValueError(f"{path}: {BASE_KEY} = {name!r}: expected the file name of a YAML in the same folder "
                         "(relative paths in it resolve against that folder, so it must be this one).")
    parent = path.parent / name
    if parent.resolve() in (path.resolve(), *chain):
        raise ValueError(f"{path}: {BASE_KEY} = {name!r} leads back to itself: "
                         + " -> ".join(p.name for p in (*chain, path.resolve(), parent.resolve())))
    if not parent.is_file():
        raise FileNotFoundError(f"{path}: {BASE_KEY} = {name!r}: {parent} does not exist.")
    inherited = _with_base(cls, parent, _read_yaml(parent), (*chain, path.resolve()))
    if not isinstance(inherited, dict):
        raise ValueError(f"{parent}: expected a mapping of settings, the base of {path.name}.")
    return merge_onto(cls, inherited, data)


def load_yaml(cls, path: str | Path):
    """Read a YAML file into dataclass `cls` (errors name the file; relative paths resolve against its folder),
    merged over its `base:` YAML if it names one. `path` may be `pal:NAME`, a config shipped with pal."""
    path = config_path(path)
    data = _with_base(cls, path, _read_yaml(path))
    # A shipped config's folder is inside the installed package, which means nothing to its user: its relative paths
    # name the user's files from the working directory. A user's own YAML is read against its own folder.
    shipped = path.resolve().is_relative_to(packaged_configs().resolve())
    return from_dict(cls, data, where=f"{path}:", base=Path.cwd() if shipped else path.resolve().parent)


class YamlConfig:
    """Mixin for a dataclass config: `Cls.from_yaml(path)` and `Cls.from_dict(mapping)`, both strict."""

    @classmethod
    def from_yaml(cls, path):
        return load_yaml(cls, path)

    @classmethod
    def from_dict(cls, data: dict, base: str | Path | None = None):
        return from_dict(cls, data, base=base)
