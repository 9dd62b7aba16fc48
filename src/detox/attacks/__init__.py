"""Backdoor attacks: one module per attack, a registry, target maps, multi-attack poisoning.

* :class:`Attack` (``attack.apply(x, y) -> (x_poisoned, y_poisoned)``), :data:`ATTACKS`,
  :func:`make_attack`, :func:`attack_params`;
* :class:`TargetMap` (all-to-one, all-to-all, source-specific);
* :class:`AttackSpec`, :func:`parse_attacks`, :data:`SUITES` (``badloss-*``);
* :func:`poison` -> :class:`~detox.data.PoisonedSet`.

Adding an attack: one new module (config dataclass + ``@register`` class) imported below.
"""

from detox.attacks import (  # noqa: F401  (each module registers its attack)
    badnets,
    blend_pattern,
    blend_random,
    blended,
    bpp,
    frequency,
    htbd,
    input_aware,
    issba,
    lc,
    lf,
    narcissus,
    patch,
    refool,
    sig,
    single_pixel,
    sinusoid,
    trojannn,
    wanet,
)
from detox.attacks import suites as _suites  # noqa: F401  (registers the suites)
from detox.attacks.base import (
    ATTACKS,
    LARGE_SIZE,
    Attack,
    AttackConfig,
    attack_params,
    hp,
    make_attack,
    register,
)
from detox.attacks.poison import attack_from_record, poison
from detox.attacks.spec import SUITES, AttackSpec, parse_attacks, suite
from detox.attacks.targets import TargetMap, poison_count

__all__ = [
    "ATTACKS",
    "LARGE_SIZE",
    "SUITES",
    "Attack",
    "AttackConfig",
    "AttackSpec",
    "TargetMap",
    "attack_from_record",
    "attack_params",
    "hp",
    "make_attack",
    "parse_attacks",
    "poison",
    "poison_count",
    "register",
    "suite",
]
