"""Typed configuration objects and presets.

Every hyper-parameter is declared once, as a dataclass field with its default and a
one-line note on its unit and source. A *preset* (``smoke``, ``quick``, ``paper``) is a
named set of overrides kept next to the dataclass in ``PRESETS``; any value can be
overridden again by the user (``--set key=value`` on the command line).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, TypeVar

from detox.errors import ConfigError

PRESET_NAMES = ("smoke", "quick", "paper")

C = TypeVar("C")


def _coerce(value: Any, typ: Any, name: str) -> Any:
    """Convert CLI strings to a field's type (bool, int, float, str, tuples)."""
    if not isinstance(value, str):
        return value
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value.lower() in ("none", "null", ""):
            return None
        typ = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(typ), typing.get_args(typ)
    try:
        if typ is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if typ is int:
            return int(value)
        if typ is float:
            return float(value)
        if origin is tuple:
            parts = [p for p in value.replace("(", "").replace(")", "").split(",") if p.strip()]
            return tuple(_coerce(p.strip(), args[0], name) for p in parts)
    except ValueError as e:
        raise ConfigError(f"{name}={value!r}: expected {getattr(typ, '__name__', typ)}") from e
    return value


def make_config(cls: type[C], preset: str | None = None, **overrides: Any) -> C:
    """Instantiate ``cls`` with its ``PRESETS[preset]`` values, then ``overrides``.

    Unknown keys and values of the wrong type raise :class:`ConfigError` naming the key.
    """
    values: dict[str, Any] = {}
    presets: dict[str, dict[str, Any]] = getattr(cls, "PRESETS", {})
    if preset is not None:
        valid = list(dict.fromkeys([*PRESET_NAMES, *presets]))
        if preset not in valid:
            raise ConfigError(
                f"preset {preset!r} of {cls.__name__}: expected one of {', '.join(valid)}"
            )
        values.update(presets.get(preset, {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in list(values):
        if key not in fields:
            raise ConfigError(
                f"{cls.__name__} has no setting {key!r}; valid settings: {', '.join(sorted(fields))}"
            )
        values[key] = _coerce(values[key], hints[key], key)
        items = values[key] if isinstance(values[key], tuple) else (values[key],)
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            raise ConfigError(f"{key}={values[key]!r}: expected a finite number")
    cfg = cls(**values)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    """``["lr=0.1", "epochs=3"]`` -> ``{"lr": "0.1", "epochs": "3"}``."""
    out: dict[str, str] = {}
    for p in pairs or []:
        if "=" not in p:
            raise ConfigError(f"--set {p!r}: expected key=value")
        k, v = p.split("=", 1)
        out[k.strip().replace("-", "_")] = v.strip()
    return out


def split_overrides(cls: type, overrides: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``overrides`` that are fields of ``cls``."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in overrides.items() if k in names}


def asdict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


@dataclasses.dataclass
class DataConfig:
    """Which data a command uses. Subsets are seeded and class-balanced."""

    dataset: str = "cifar10"  # registered name or path (image folder / .npz)
    train_subset: int | None = None  # images; None = the full training split
    test_subset: int | None = None  # images; None = the full test split
    image_size: int | None = None  # pixels (square); None = the dataset's native size
    seed: int = 0  # seed of the subsets

    PRESETS: typing.ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"train_subset": 500, "test_subset": 200},
        "quick": {},
        "paper": {},
    }

    def validate(self) -> None:
        for k in ("train_subset", "test_subset", "image_size"):
            v = getattr(self, k)
            if v is not None and v <= 0:
                raise ConfigError(f"{k} must be a positive integer, got {v}")
