"""Attack specifications: what to poison with, how much, towards which class.

An :class:`AttackSpec` names a registered attack and says how it is used (ratio, target,
target map, label mode, trigger parameters). Unset values come from the attack's config
(ratio 0.1 and target 0 by default, METHODS.md section 4). Specs can be written as strings::

    badnets                               # defaults
    badnets,blended                       # two attacks, disjoint poisoned subsets
    badnets:ratio=0.05:target=3           # spec fields and trigger parameters, ':'-separated
    sig:delta=40:target=random            # 'random': a seeded random target class
    sig:preset=ultraclean                 # a named setting of the attack (its ``presets``)
    badnets:target_mode=source:source=1+2 # source-specific (classes 1 and 2 -> target 0)
    wanet:target_mode=all2all
    badloss-cifar10                       # a named suite (see detox.attacks.suites)
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from detox.attacks.base import ATTACKS, LABEL_MODES
from detox.attacks.targets import TARGET_MODES, check_ratio
from detox.errors import ConfigError
from detox.registry import Registry

SUITES: Registry[Any] = Registry("attack suite")

_SPEC_KEYS = {
    "ratio": "ratio",
    "target": "target",
    "target_mode": "target_mode",
    "mode": "target_mode",
    "source": "source_classes",
    "sources": "source_classes",
    "source_classes": "source_classes",
    "min_count": "min_count",
    "label_mode": "label_mode",
    "label": "label_mode",
    "preset": "preset",
}


@dataclass
class AttackSpec:
    """One attack of a poisoning run.

    ``ratio``: fraction of the training set (dirty label) or of the target class (clean
    label); None = the attack's default. ``target``: a class index, ``"random"`` (seeded,
    each attack its own), or None = the attack's default. ``min_count``: at least this many
    poisoned examples (BaDLoss GTSRB Sinusoid: 300). ``label_mode``: override the attack's
    own ("dirty"/"clean"). ``preset``: a named setting of the attack (its ``presets``;
    None = its defaults). ``params``: trigger settings of the attack's config, applied on
    top of the preset.
    """

    name: str
    ratio: float | None = None
    target: int | str | None = None
    target_mode: str = "all2one"
    source_classes: tuple[int, ...] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    min_count: int = 0
    label_mode: str | None = None
    preset: str | None = None

    def __post_init__(self) -> None:
        self.name = self.name.strip().lower()
        if self.name not in ATTACKS:
            raise unknown_attack(self.name)
        if self.preset is not None:
            self.preset = str(self.preset).strip().lower()
            ATTACKS.get(self.name).preset_config(self.preset)  # unknown presets raise here
        if self.ratio is not None:
            self.ratio = check_ratio(_num(self.ratio, "ratio", float))
        if isinstance(self.target, str):
            t = self.target.strip().lower()
            self.target = "random" if t == "random" else _num(t, "target", int)
        if self.target is not None and self.target != "random":
            if isinstance(self.target, bool) or int(self.target) != self.target or self.target < 0:
                raise ConfigError(f"target={self.target!r} is not a class: expected an index >= 0")
            self.target = int(self.target)
        if self.target_mode not in TARGET_MODES:
            raise ConfigError(
                f"target_mode={self.target_mode!r}: expected one of {', '.join(TARGET_MODES)}"
            )
        if isinstance(self.source_classes, str):
            parts = self.source_classes.replace("+", ",").replace(" ", ",").split(",")
            self.source_classes = tuple(_num(p, "source_classes", int) for p in parts if p)
        if self.source_classes is not None:
            self.source_classes = tuple(int(s) for s in self.source_classes)
        self.min_count = _num(self.min_count, "min_count", int)
        if self.min_count < 0:
            raise ConfigError(f"min_count={self.min_count}: expected >= 0")
        if self.label_mode is not None and self.label_mode not in LABEL_MODES:
            raise ConfigError(
                f"label_mode={self.label_mode!r}: expected one of {', '.join(LABEL_MODES)}"
            )
        self.params = dict(self.params)
        bad = set(self.params) & {"ratio", "target"}
        if bad:
            raise ConfigError(f"set {sorted(bad)} on the AttackSpec, not in params")

    @property
    def attack_cls(self):
        return ATTACKS.get(self.name)

    @classmethod
    def parse(cls, text: str) -> AttackSpec:
        """``"name:key=value:key=value"`` -> AttackSpec (see the module docstring)."""
        head, *pairs = [p.strip() for p in text.strip().split(":")]
        kwargs: dict[str, Any] = {}
        params: dict[str, Any] = {}
        for p in pairs:
            if not p:
                continue
            if "=" not in p:
                raise ConfigError(f"attack spec {text!r}: {p!r} is not key=value")
            k, v = (s.strip() for s in p.split("=", 1))
            k = k.replace("-", "_")
            if k in _SPEC_KEYS:
                kwargs[_SPEC_KEYS[k]] = v
            else:
                params[k] = v
        return cls(head, params=params, **kwargs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttackSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - names
        if extra:
            raise ConfigError(
                f"attack spec keys {sorted(extra)} unknown; valid keys: {', '.join(sorted(names))}"
            )
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["source_classes"] = list(self.source_classes) if self.source_classes else None
        return d

    def __str__(self) -> str:
        parts = [self.name]
        for k in ("preset", "ratio", "target", "min_count", "label_mode"):
            v = getattr(self, k)
            if v not in (None, 0):
                parts.append(f"{k}={v}")
        if self.target_mode != "all2one":
            parts.append(f"target_mode={self.target_mode}")
        if self.source_classes:
            parts.append("source=" + "+".join(map(str, self.source_classes)))
        parts += [f"{k}={v}" for k, v in self.params.items()]
        return ":".join(parts)


def _num(v: Any, name: str, typ: type) -> Any:
    try:
        return typ(v) if isinstance(v, str) else v
    except ValueError as e:
        raise ConfigError(f"{name}={v!r}: expected {typ.__name__}") from e


def unknown_attack(name: str) -> ConfigError:
    return ConfigError(
        f"unknown attack {name!r}; valid attacks: {', '.join(ATTACKS.names())}; "
        f"valid suites: {', '.join(SUITES.names())}"
    )


def _split_top(text: str) -> list[str]:
    """Split on commas, re-joining pieces that continue a value (``positions=15,15``)."""
    out: list[str] = []
    for piece in text.split(","):
        if out and "=" in out[-1] and re.fullmatch(r"[\d.+\-\s]+", piece):
            out[-1] += "," + piece
        else:
            out.append(piece)
    return [p.strip() for p in out if p.strip()]


def parse_attacks(value: Any) -> list[AttackSpec]:
    """Specs from a string (``"badnets,blended"``, ``"badloss-cifar10"``), an AttackSpec, a
    dict, a suite name, or a list of any of these."""
    if value is None:
        return []
    if isinstance(value, AttackSpec):
        return [value]
    if isinstance(value, dict):
        return [AttackSpec.from_dict(value)]
    if isinstance(value, str):
        specs: list[AttackSpec] = []
        for token in _split_top(value):
            head = token.split(":", 1)[0].strip().lower()
            if head in SUITES and head not in ATTACKS:
                if ":" in token:
                    raise ConfigError(f"suite {head!r} takes no settings (got {token!r})")
                specs += suite(head)
            elif head in ATTACKS:
                specs.append(AttackSpec.parse(token))
            else:
                raise unknown_attack(head)
        return specs
    if isinstance(value, list | tuple):
        return [s for v in value for s in parse_attacks(v)]
    raise ConfigError(f"cannot read attack specs from {type(value).__name__}")


def suite(name: str) -> list[AttackSpec]:
    """The attack specs of a named suite (ConfigError listing the suites when unknown)."""
    return [dataclasses.replace(s, params=dict(s.params)) for s in SUITES.get(name)()]
