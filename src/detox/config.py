"""Typed configuration objects and presets.

Every hyper-parameter of every config (attacks, detectors, purifiers, training, data,
diffusion training) is declared once, in one style: a dataclass field made by :func:`hp`
with its default, unit, source, help and, where it has one, its valid ``range`` or
``choices``. :func:`make_config` checks the declared ranges and choices of every field
(:func:`check_fields`); a config's own ``validate()`` only checks what involves several
fields (or what no range can say, e.g. "an odd size"). A *preset* (``smoke``, ``quick``,
``paper``) is a named set of overrides kept next to the dataclass in ``PRESETS``; any value
can be overridden again by the user (``--set key=value`` on the command line).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import typing
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from detox.errors import ConfigError

PRESET_NAMES = ("smoke", "quick", "paper")

C = TypeVar("C")


# ---------------------------------------------------------------------------------------
# declaring hyper-parameters: hp(), ranges and choices

_RANGE_RE = re.compile(r"^\s*([\[(])\s*([^,\[\]()]*?)\s*,\s*([^,\[\]()]*?)\s*([\])])\s*$")


@dataclasses.dataclass(frozen=True)
class Range:
    """An interval of valid numbers, written as in mathematics: ``"[0, 1]"`` (closed),
    ``"(0, 1]"`` (0 excluded), ``"[1, inf)"`` (at least 1), ``"(-inf, 0)"``. An empty end
    or ``inf`` / ``-inf`` means unbounded on that side (and must be written open)."""

    lo: float
    hi: float
    lo_open: bool
    hi_open: bool
    text: str

    @classmethod
    def parse(cls, text: str) -> Range:
        m = _RANGE_RE.match(text)
        if m is None:
            raise ValueError(f"range {text!r}: expected e.g. '[0, 1]', '(0, 1]' or '[1, inf)'")
        left, lo_s, hi_s, right = m.groups()
        lo_s, hi_s = lo_s or "-inf", hi_s or "inf"
        try:
            lo, hi = float(lo_s), float(hi_s)
        except ValueError as e:
            raise ValueError(f"range {text!r}: the ends must be numbers or inf") from e
        lo_open, hi_open = left == "(", right == ")"
        if (math.isinf(lo) and not lo_open) or (math.isinf(hi) and not hi_open):
            raise ValueError(f"range {text!r}: an infinite end must be open")
        if lo > hi:
            raise ValueError(f"range {text!r}: empty (lower end above the upper end)")
        return cls(lo, hi, lo_open, hi_open, f"{left}{lo_s}, {hi_s}{right}")

    def __contains__(self, v: object) -> bool:
        if not _is_number(v):
            return False
        above = self.lo < v if self.lo_open else self.lo <= v  # type: ignore[operator]
        below = v < self.hi if self.hi_open else v <= self.hi  # type: ignore[operator]
        return bool(above and below)

    def __str__(self) -> str:
        return self.text


def _is_number(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def hp(
    default: Any = dataclasses.MISSING,
    unit: str = "",
    source: str = "",
    help: str = "",
    *,
    range: str | None = None,
    choices: Iterable[Any] | None = None,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A config field: its default, ``unit``, ``source`` (``"[paper]"``, ``"[code]"``,
    ``"[BackdoorBox]"``, ``"[open]"`` (chosen here)... plus any note), ``help`` and the
    values it accepts, attached as ``dataclasses.field`` metadata.

    ``range``: the interval of valid numbers as a string, ends included by ``[``/``]`` and
    excluded by ``(``/``)``: ``"[0, 1]"``, ``"(0, 1]"``, ``"[1, inf)"`` (``inf``, ``-inf`` or
    an empty end: unbounded, always open). ``choices``: the valid values. Both apply to
    each element of a tuple value; a None value (an optional field left unset) is never
    checked. :func:`make_config` enforces them (:func:`check_fields`). The default must
    satisfy them (checked here, when the class is defined).
    """
    rng = Range.parse(range) if range is not None else None
    allowed = tuple(choices) if choices is not None else None
    if default is not dataclasses.MISSING:
        problem = _problem(default, rng, allowed)
        if problem is not None:
            raise ValueError(f"hp default {default!r}: {problem}")
    metadata = {"unit": unit, "source": source, "help": help, "range": rng, "choices": allowed}
    if default_factory is not None:
        if default is not dataclasses.MISSING:
            raise ValueError("hp: give a default or a default_factory, not both")
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _problem(value: Any, rng: Range | None, choices: tuple[Any, ...] | None) -> str | None:
    """What is wrong with ``value`` for a declared range/choices, or None."""
    if value is None or (rng is None and choices is None):
        return None
    each = isinstance(value, tuple | list)
    items = value if each else (value,)
    what = "every element" if each else "a value"
    for v in items:
        if choices is not None and v not in choices:
            names = ", ".join(str(c) for c in choices)
            return f"expected {'every element to be ' if each else ''}one of {names}"
        if rng is not None and v not in rng:
            kind = what if _is_number(v) else f"{what} (a number)"
            return f"expected {kind} in {rng}"
    return None


def check_fields(cfg: Any) -> None:
    """Raise :class:`ConfigError` when a field of ``cfg`` is outside its declared ``range``
    or ``choices`` (see :func:`hp`); the message names the field, its value and what was
    expected, e.g. ``lr=-1.0: expected a value in (0, inf)``."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        problem = _problem(value, f.metadata.get("range"), f.metadata.get("choices"))
        if problem is not None:
            raise ConfigError(f"{f.name}={value!r}: {problem}")


def describe_fields(cls: Any) -> list[dict[str, Any]]:
    """One row per field of config class (or instance) ``cls``, in declaration order:
    ``name``, ``default``, ``unit``, ``source``, ``help``, ``range`` (its text, e.g.
    ``"(0, 1]"``, or None) and ``choices`` (a tuple or None); for docs and the CLI."""
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        rng = f.metadata.get("range")
        rows.append(
            {
                "name": f.name,
                "default": default,
                "unit": f.metadata.get("unit", ""),
                "source": f.metadata.get("source", ""),
                "help": f.metadata.get("help", ""),
                "range": str(rng) if rng is not None else None,
                "choices": f.metadata.get("choices"),
            }
        )
    return rows


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

    Unknown keys, values of the wrong type and values outside a field's declared range or
    choices (:func:`check_fields`) raise :class:`ConfigError` naming the key; then the
    config's own ``validate()`` (checks across fields), when it has one, runs.
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
    check_fields(cfg)
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

    dataset: str = hp(
        "cifar10", "name or path", help="registered name or path (image folder / .npz)"
    )
    train_subset: int | None = hp(
        None, "images", help="None = the full training split", range="[1, inf)"
    )
    test_subset: int | None = hp(
        None, "images", help="None = the full test split", range="[1, inf)"
    )
    image_size: int | None = hp(
        None, "pixels (square)", help="None = the dataset's native size", range="[1, inf)"
    )
    seed: int = hp(0, "seed", help="seed of the subsets")

    PRESETS: typing.ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"train_subset": 500, "test_subset": 200},
        "quick": {},
        "paper": {},
    }
