"""Named multi-attack suites (BaDLoss's simultaneous-attack benchmark, METHODS.md section 3).

Each attack poisons a disjoint seeded subset and gets its own seeded random target class
(distinct targets while there are enough classes; clean-label attacks only get a class with
enough images). Ratios are of the whole training set, Sinusoid's and Narcissus's of their
target class. Narcissus (CIFAR-10's seventh attack) builds its optimised trigger on first
use (a learned attack: the run's preset picks its `quick` or `paper` settings). Large-image settings (Patch squares, blend alpha 0.15, frequency magnitude 90)
apply by image size, not by suite.
"""

from __future__ import annotations

from collections.abc import Callable

from detox.attacks.spec import SUITES, AttackSpec
from detox.errors import ConfigError

SUITE_DATASETS: dict[str, str] = {}  # suite -> the dataset its ratios and targets are for


def _suite(name: str, dataset: str) -> Callable:
    def register(fn: Callable) -> Callable:
        SUITE_DATASETS[name] = dataset
        return SUITES.register(name)(fn)

    return register


def check_suite_dataset(suite: str, dataset: str | None) -> None:
    """Refuse a suite meant for another registered dataset (its ratios, its class counts);
    a dataset given as a path is not checked."""
    from detox.data.registry import dataset_facts

    want = SUITE_DATASETS.get(suite)
    facts = dataset_facts(dataset) if dataset else None
    if want is None or facts is None:
        return
    want_facts = dataset_facts(want)
    if want_facts is not None and want_facts.name != facts.name:
        raise ConfigError(
            f"suite {suite!r} is BaDLoss's setting for {want}, not for {dataset}; use "
            + (
                ", ".join(
                    repr(k)
                    for k, v in SUITE_DATASETS.items()
                    if (f := dataset_facts(v)) is not None and f.name == facts.name
                )
                or "single attacks (--attack)"
            )
        )


def _badloss(ratios: dict[str, float], sinusoid_min: int = 0) -> list[AttackSpec]:
    return [
        AttackSpec(
            name,
            ratio=r,
            target="random",
            min_count=sinusoid_min if name == "sinusoid" else 0,
        )
        for name, r in ratios.items()
    ]


@_suite("badloss-cifar10", "cifar10")
def badloss_cifar10() -> list[AttackSpec]:
    """Patch, Single-pixel, Blend-R, Blend-P (1% each), Sinusoid (10% of its target
    class), Frequency (1%), Narcissus (0.5% of its target class): the paper's seven."""
    return _badloss(
        {
            "patch": 0.01,
            "single-pixel": 0.01,
            "blend-random": 0.01,
            "blend-pattern": 0.01,
            "sinusoid": 0.10,
            "frequency": 0.01,
            "narcissus": 0.005,
        }
    )


@_suite("badloss-gtsrb", "gtsrb")
def badloss_gtsrb() -> list[AttackSpec]:
    """Patch 2%, Single-pixel 4%, Blend-R 1%, Blend-P 1%, Sinusoid max(10% of its target
    class, 300), Frequency 1%."""
    return _badloss(
        {
            "patch": 0.02,
            "single-pixel": 0.04,
            "blend-random": 0.01,
            "blend-pattern": 0.01,
            "sinusoid": 0.10,
            "frequency": 0.01,
        },
        sinusoid_min=300,
    )


@_suite("badloss-imagenette", "imagenette")
def badloss_imagenette() -> list[AttackSpec]:
    """Patch 5%, Blend-R 1%, Blend-P 1%, Sinusoid 10% of its target class, Frequency 1%."""
    return _badloss(
        {
            "patch": 0.05,
            "blend-random": 0.01,
            "blend-pattern": 0.01,
            "sinusoid": 0.10,
            "frequency": 0.01,
        }
    )


@_suite("badloss-imagenet", "imagenet")
def badloss_imagenet() -> list[AttackSpec]:
    """ImageNet ratios: Patch 0.1%, Blend-R 0.05%, Blend-P 0.02%, Sinusoid 10% of its
    target class, Frequency 0.1%."""
    return _badloss(
        {
            "patch": 0.001,
            "blend-random": 0.0005,
            "blend-pattern": 0.0002,
            "sinusoid": 0.10,
            "frequency": 0.001,
        }
    )
