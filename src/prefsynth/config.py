"""Typed configs as the CLI: every stage owns one dataclass; this module turns them into flags and back.

A field `temperature` of the `generate` stage becomes `--generate.temperature`; its `metadata["help"]` becomes the
help text and its default is written nowhere else. `alias` metadata adds a short flat flag (`--n`, `--out`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from prefsynth.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A setting that does not parse (wrong type, bad choice, unknown field): the user's to fix, raised here.

    Also a ValueError, the type callers that read settings from elsewhere (a manifest) already catch."""


def opt(default: Any, help: str, *, alias: str | None = None, **kw: Any) -> Any:
    """A dataclass field with help text (and optionally a flat CLI alias)."""
    meta = {"help": help}
    if alias:
        meta["alias"] = alias
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def to_dict(obj: Any) -> Any:
    """JSON-ready form of a config (Paths become strings)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _convert(tp: Any, value: Any, name: str) -> Any:
    tp, optional = _strip_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("all", "none", "null")):
        return None
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if get_origin(tp) is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{name} must be one of {', '.join(map(str, get_args(tp)))}, got {value!r}")
        return value
    if tp is Path:
        return Path(value)
    if tp is bool:
        if isinstance(value, str):
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return bool(value)
    if tp in (int, float, str):
        try:
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be {tp.__name__}, got {value!r}") from None
    if get_origin(tp) in (list, tuple):
        (inner, *_) = get_args(tp) or (str,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        return [_convert(inner, v, name) for v in value]
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
    kwargs = {k: _convert(hints[k], v, k) for k, v in data.items()}
    return cls(**kwargs)


def _walk(cls: type, prefix: str = ""):
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _strip_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            yield from _walk(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, hints[f.name]


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    defaults = cls()
    for dotted, f, tp in _walk(cls):
        flags = [f"--{dotted}"]
        if alias := f.metadata.get("alias"):
            flags.insert(0, f"--{alias}")
        default = defaults
        for part in dotted.split("."):
            default = getattr(default, part)
        base, _ = _strip_optional(tp)
        choices = get_args(base) if get_origin(base) is Literal else None
        help_text = f.metadata.get("help", "")
        parser.add_argument(
            *flags, dest=dotted, default=argparse.SUPPRESS, metavar=None if choices else "X",
            choices=choices, help=f"{help_text} (default: {to_dict(default)!r})",
        )


def parse_into(cls: type[T], ns: argparse.Namespace, base: T | None = None) -> T:
    """Build `cls` from the defaults (or `base`), overriding only the flags given on the command line."""
    data = to_dict(base if base is not None else cls())
    for dotted, value in vars(ns).items():
        if "." not in dotted and dotted not in data:
            continue
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return from_dict(cls, data)


def dumps(obj: Any) -> str:
    return json.dumps(to_dict(obj), indent=2, sort_keys=True)
