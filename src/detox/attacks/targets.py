"""Target maps (which label a poisoned example gets) and poisoning counts, independent of
any trigger.

* ``all2one``: every poisoned example gets class ``target``;
* ``all2all``: ``y -> (y + 1) mod K``;
* ``source``: source-specific, only examples of ``source_classes`` are poisoned (-> ``target``).

:meth:`TargetMap.eligible` says which examples a dirty-label attack may poison (those whose
label the map changes) and which test images enter the attack's triggered test set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from detox.errors import ConfigError

TARGET_MODES = ("all2one", "all2all", "source")


@dataclass(frozen=True)
class TargetMap:
    mode: str = "all2one"
    target: int | None = 0
    source_classes: tuple[int, ...] | None = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in TARGET_MODES:
            raise ConfigError(
                f"target_mode={self.mode!r}: expected one of {', '.join(TARGET_MODES)}"
            )
        k = self.num_classes
        if k is not None and k < 2:
            raise ConfigError(f"num_classes={k}: a backdoor needs at least 2 classes")
        if self.mode == "all2all":
            object.__setattr__(self, "target", None)
        else:
            t = self.target
            if not isinstance(t, int) or isinstance(t, bool) or t < 0 or (k is not None and t >= k):
                valid = f"0..{k - 1}" if k is not None else "a class index >= 0"
                raise ConfigError(f"target={t!r} is not a class: expected {valid}")
        if self.mode == "source":
            src = tuple(int(s) for s in (self.source_classes or ()))
            if not src:
                raise ConfigError("target_mode='source' needs source_classes (a non-empty list)")
            bad = [s for s in src if s < 0 or (k is not None and s >= k)]
            if bad:
                raise ConfigError(f"source_classes: {bad} are not classes (0..{(k or 0) - 1})")
            if all(s == self.target for s in src):
                raise ConfigError("source_classes must contain a class other than the target")
            object.__setattr__(self, "source_classes", tuple(sorted(set(src))))
        elif self.source_classes is not None:
            raise ConfigError(
                f"source_classes are only used with target_mode='source', not {self.mode!r}"
            )

    # -- constructors --------------------------------------------------------------------
    @classmethod
    def all2one(cls, target: int, num_classes: int | None = None) -> TargetMap:
        return cls("all2one", target, None, num_classes)

    @classmethod
    def all2all(cls, num_classes: int) -> TargetMap:
        return cls("all2all", None, None, num_classes)

    @classmethod
    def source_specific(
        cls,
        target: int,
        source_classes: list[int] | tuple[int, ...],
        num_classes: int | None = None,
    ) -> TargetMap:
        return cls("source", target, tuple(source_classes), num_classes)

    def with_classes(self, num_classes: int) -> TargetMap:
        """The same map checked against ``num_classes`` classes."""
        return TargetMap(self.mode, self.target, self.source_classes, num_classes)

    # -- use -----------------------------------------------------------------------------
    def eligible(self, y: torch.Tensor) -> torch.Tensor:
        """Boolean mask: examples whose label this map changes (poisonable / ASR-testable)."""
        y = torch.as_tensor(y)
        if self.mode == "all2all":
            return torch.ones_like(y, dtype=torch.bool)
        mask = y != self.target
        if self.mode == "source":
            src = torch.tensor(self.source_classes, dtype=y.dtype, device=y.device)
            mask &= torch.isin(y, src)
        return mask

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """Labels as trained / wanted by the attacker for true labels ``y``."""
        y = torch.as_tensor(y)
        if self.mode == "all2all":
            if self.num_classes is None:
                raise ConfigError("target_mode='all2all' needs num_classes")
            return (y + 1) % self.num_classes
        if self.mode == "all2one":
            return torch.full_like(y, int(self.target))
        return torch.where(self.eligible(y), torch.full_like(y, int(self.target)), y)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_mode": self.mode,
            "target": self.target,
            "source_classes": list(self.source_classes) if self.source_classes else None,
        }


def check_ratio(ratio: float, what: str = "ratio") -> float:
    """``ratio`` as a float, or ConfigError when it is not in (0, 1]."""
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 < ratio <= 1.0:
        raise ConfigError(f"{what}={ratio!r}: expected a fraction in (0, 1]")
    return float(ratio)


def poison_count(ratio: float, n: int, min_count: int = 0) -> int:
    """Number of examples to poison: ``floor(ratio * n)``, at least ``min_count`` and 1."""
    check_ratio(ratio)
    if min_count < 0:
        raise ConfigError(f"min_count={min_count}: expected >= 0")
    return max(1, int(math.floor(ratio * n + 1e-9)), int(min_count))
