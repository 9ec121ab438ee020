"""Frozen-dataclass configs: ``--set a.b=value`` overrides, dict round trips, unknown keys rejected.

The training packages (``recsys_ssl``, ``text_ood``) describe every run with nested frozen
dataclasses whose ``__post_init__`` validates the values, and presets are plain functions that
return such a config. This module holds the generic part both need (they never import each
other; both import ``core``).

Example:
  >>> cfg = apply_overrides(preset(), ["ssl.method=cfm", "ssl.weight=0.3"])
  >>> to_dict(cfg)["ssl"]["weight"]
  0.3
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value that does not fit the config's dataclasses."""


def to_dict(config: Any) -> dict[str, Any]:
    """Returns the config as nested plain dicts (tuples become lists), ready for JSON."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
    """Builds ``cls`` from nested dicts, rejecting keys the dataclass does not define.

    Raises:
      ConfigError: an unknown key, or a value of the wrong type.
    """
    return _build(cls, values, prefix="")


def apply_overrides(config: T, overrides: Iterable[str]) -> T:
    """Returns a copy of ``config`` with ``key.path=value`` overrides applied (validation re-runs).

    Values are parsed according to the field's annotation: ``int``, ``float``, ``bool``
    (true/false/1/0/yes/no), ``str``, ``None`` for optional fields (``none``/``null``), and tuples
    as comma-separated lists or JSON arrays.

    A root config class may declare ``REPLACED_KEYS: ClassVar[Mapping[str, str]]``: dotted keys
    renamed or retired since -> what to set instead; overriding one is refused with that advice.

    Raises:
      ConfigError: the override is not ``key=value``, names an unknown or replaced field (the
        error lists the valid ones, or names the replacement), or its value cannot be parsed as
        the field's type.
    """
    replaced = getattr(type(config), "REPLACED_KEYS", {})
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override must look like key.path=value, received {override!r}")
        path, raw = override.split("=", 1)
        if path.strip() in replaced:
            raise ConfigError(f"config key {path.strip()!r} was replaced: use {replaced[path.strip()]}")
        config = _set_path(config, path.strip().split("."), raw.strip(), full_path=path.strip())
    return config


def _set_path(node: Any, keys: list[str], raw: str, full_path: str) -> Any:
    hints = typing.get_type_hints(type(node))
    names = [f.name for f in dataclasses.fields(node)]
    key = keys[0]
    if key not in names:
        raise ConfigError(f"unknown config key {full_path!r}: {key!r} is not one of {names}")
    current = getattr(node, key)
    if len(keys) == 1:
        if dataclasses.is_dataclass(current):
            raise ConfigError(f"{full_path!r} is a config section; set one of its fields instead")
        new_value = parse_value(raw, hints[key], full_path)
    else:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"{'.'.join(keys[:1])!r} in {full_path!r} is not a config section")
        new_value = _set_path(current, keys[1:], raw, full_path)
    try:
        return dataclasses.replace(node, **{key: new_value})
    except (ValueError, TypeError) as error:
        raise ConfigError(f"invalid value for {full_path!r}: {error}") from error


def parse_value(raw: str, annotation: Any, name: str) -> Any:
    """Parses the string ``raw`` as a value of type ``annotation`` (see :func:`apply_overrides`)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and raw.lower() in ("none", "null"):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return parse_value(raw, arg, name)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"{name}: cannot parse {raw!r} as {annotation}: {errors}")
    if origin is typing.Literal:
        for choice in args:
            if str(choice) == raw:
                return choice
        raise ConfigError(f"{name}: {raw!r} is not one of {list(args)}")
    if origin is tuple:
        items = json.loads(raw) if raw.startswith("[") else [p for p in raw.split(",") if p.strip()]
        item_type = args[0] if args else str
        return tuple(parse_value(str(item).strip(), item_type, name) for item in items)
    if annotation is bool:
        lowered = raw.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected a boolean (true/false), received {raw!r}")
    if annotation in (int, float):
        try:
            return annotation(raw)
        except ValueError:
            raise ConfigError(
                f"{name}: expected {annotation.__name__}, received {raw!r}"
            ) from None
    if annotation is str:
        return raw
    raise ConfigError(f"{name}: overrides of type {annotation} are not supported")


def _build(cls: Any, values: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, received {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config keys {[prefix + k for k in unknown]}; valid: {sorted(fields)}")
    kwargs = {}
    for name, value in values.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = _build(annotation, value, prefix=f"{prefix}{name}.")
        elif typing.get_origin(annotation) is tuple and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{prefix or 'config'}: {error}") from error
