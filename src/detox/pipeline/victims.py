"""Data and victims: resolve a preset's configs, poison the data, train the victim.

Victims are cached by a content hash of their training data, training config, the code
of training and models and the runtime (:func:`victim_key`): a victim is trained once and
reused by every defense that needs it.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any

import torch
from torch import nn

from detox.config import ConfigError, DataConfig, hp, make_config
from detox.data import PoisonedSet, load_splits
from detox.trained import train_classifier
from detox.training import TrainConfig
from detox.utils.device import resolve_device


@dataclasses.dataclass
class ExperimentConfig:
    """Settings of the pipeline itself (data and training have their own configs)."""

    test_limit: int | None = hp(
        None,
        "images",
        help="triggered test images per attack; None = all eligible",
        range="[1, inf)",
    )
    purify_limit: int | None = hp(
        None,
        "images",
        help="clean test images, and triggered ones per attack, that a purifier is "
        "evaluated on (a seeded subset, the same for every purifier; the undefended "
        "victim is measured on the same images as its reference); None = all",
        range="[1, inf)",
    )
    detect_only: bool = hp(
        False,
        help="detectors: score and cut, report the detection figures, and skip the "
        "retraining on the kept examples (no CA / PA / ASR of a cleansed model)",
    )
    cache_victims: bool = hp(True, help="reuse a victim trained on the same data and config")

    PRESETS: typing.ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"test_limit": 200},
        "quick": {},
        "paper": {},
    }


# ---------------------------------------------------------------------------------------
# poisoning


def make_poisoned_set(
    data_cfg: DataConfig,
    attacks: Any,
    seed: int,
    data_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    test_limit: int | None = None,
    scale: str | None = None,
) -> PoisonedSet:
    """Load the data of ``data_cfg`` and poison it with ``attacks`` (None/"" = no attack);
    ``scale``: the run's preset, which picks learned attacks' artefact settings
    (:func:`detox.attacks.poison`)."""
    from detox.attacks import poison
    from detox.attacks.suites import check_suite_dataset

    names = [attacks] if isinstance(attacks, str) else attacks if isinstance(attacks, list) else []
    for token in names:
        if isinstance(token, str):
            for part in token.split(","):
                check_suite_dataset(part.strip(), data_cfg.dataset)
    train_ds, test_ds = load_splits(data_cfg, data_dir)
    if not test_ds.meta.get("separate_test_split", True):
        raise ConfigError(
            f"dataset {data_cfg.dataset}: no test split (no x_test/y_test keys, no train/ and "
            "test/ folders), so CA, PA and ASR would be measured on training images; add "
            "held-out test images"
        )
    if not attacks:
        return PoisonedSet.from_clean(train_ds, seed=seed, test=test_ds)
    return poison(
        train_ds, attacks, seed=seed, test=test_ds, device=device, test_limit=test_limit,
        scale=scale,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------
# victims


def train_victim(
    pset: PoisonedSet, tcfg: TrainConfig, device: torch.device | str, cache: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """The victim: a classifier trained on the poisoned set as the attacker left it.

    A training-controlled attack of the set (``controls_training`` in its record) shapes
    the training through its :class:`~detox.training.TrainHook`; once the victim exists,
    its triggered test set is made (with what the hook learned) and added to ``pset``."""
    from detox.attacks.context import AttackContext
    from detox.attacks.poison import attack_from_record, triggered_test_set

    dataset = pset.source.get("dataset") or pset.source.get("name")
    controlling = [r for r in pset.attacks if r.get("controls_training")]
    attacks, hooks = [], []
    for rec in controlling:
        attack = attack_from_record(rec, pset.num_classes)
        ctx = AttackContext(
            train=pset.as_dataset(), seed=attack.seed, device=resolve_device(device),
            dataset=dataset, progress=tcfg.progress, cache=cache,
        )  # fmt: skip
        attacks.append((rec, attack))
        hooks.append(attack.training_hook(ctx))
    model, info = train_classifier(
        pset.x, pset.y, pset.classes, tcfg, device, dataset, cache, hooks=hooks
    )
    for rec, attack in attacks:
        if pset.test is not None and rec["name"] not in pset.triggered:
            t = triggered_test_set(
                attack, pset.test, pset.seed, rec["index"], rec["attack"], rec.get("test_limit"),
                resolve_device(device),
            )  # fmt: skip
            if t is not None:
                pset.triggered[rec["name"]] = t
                rec["n_triggered_test"] = len(t)
    return model, info


# ---------------------------------------------------------------------------------------
# evaluation


def resolve_configs(
    preset: str, dataset: str, seed: int, overrides: dict[str, Any] | None = None
) -> tuple[DataConfig, TrainConfig, ExperimentConfig]:
    """Data, training and experiment configs of ``preset`` with ``overrides`` applied.

    Each override key must name a setting of one of the three configs.
    """
    from detox.config import split_overrides

    over = dict(overrides or {})
    configs = []
    used: set[str] = set()
    for cls, extra in (
        (DataConfig, {"dataset": dataset, "seed": seed}),
        (TrainConfig, {"seed": seed}),
        (ExperimentConfig, {}),
    ):
        mine = split_overrides(cls, over)
        used |= set(mine)
        configs.append(make_config(cls, preset, **{**extra, **mine}))
    unknown = set(over) - used
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    return configs[0], configs[1], configs[2]


# ---------------------------------------------------------------------------------------
# training-set defenses: score -> cut -> retrain -> evaluate
