"""Data and victims: resolve a preset's configs, poison the data, train the victim.

Victims are cached by a content hash of their training data, training config, the code
of training and models and the runtime (:func:`victim_key`): a victim is trained once and
reused by every defense that needs it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
import typing
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detox import __version__
from detox.config import ConfigError, DataConfig, asdict, make_config
from detox.data import PoisonedSet, load_splits
from detox.data.paths import cache_dir
from detox.models import build_model, load_checkpoint, save_checkpoint
from detox.training import TrainConfig, train
from detox.utils.device import resolve_device
from detox.utils.io import atomic_write_json, read_json


@dataclasses.dataclass
class ExperimentConfig:
    """Settings of the pipeline itself (data and training have their own configs)."""

    test_limit: int | None = None  # triggered test images per attack; None = all eligible
    cache_victims: bool = True  # reuse a victim trained on the same data and config

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
) -> PoisonedSet:
    """Load the data of ``data_cfg`` and poison it with ``attacks`` (None/"" = no attack)."""
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
    return poison(train_ds, attacks, seed=seed, test=test_ds, device=device, test_limit=test_limit)


# ---------------------------------------------------------------------------------------
# victims


def _code_version() -> str:
    """Digest of the code a trained model depends on: the training loop, every model module
    and every detox module they import (transitively), plus the library versions."""
    import detox.models as models_pkg
    import detox.training as training_mod
    from detox.utils.fingerprint import code_fingerprint

    models = [f"detox.models.{f.stem}" for f in Path(models_pkg.__file__).parent.glob("*.py")]
    return __version__ + ":" + code_fingerprint(training_mod, *models)[:16]


def victim_key(x: torch.Tensor, y: torch.Tensor, tcfg: TrainConfig, extra: Any = None) -> str:
    """Content hash of (training images, labels, training config, code version, ``extra``:
    the dataset, its normalisation and the runtime)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x.cpu().numpy()).tobytes())
    h.update(np.ascontiguousarray(y.cpu().numpy()).tobytes())
    cfg = {k: v for k, v in asdict(tcfg).items() if k != "progress"}
    h.update(repr(sorted(cfg.items())).encode())
    h.update(repr(extra).encode())
    h.update(_code_version().encode())
    return h.hexdigest()[:24]


def train_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    classes: list[str],
    tcfg: TrainConfig,
    device: torch.device | str,
    dataset: str | None = None,
    cache: bool = True,
    desc: str = "victim",
) -> tuple[nn.Module, dict[str, Any]]:
    """Train (or load from the victim cache) a classifier on uint8 images ``x``."""
    from detox.models.base import normalization_for
    from detox.utils.fingerprint import runtime_fingerprint

    dev = resolve_device(device) if isinstance(device, str) else device
    key = victim_key(x, y, tcfg, (dataset, normalization_for(dataset), runtime_fingerprint(dev)))
    folder = cache_dir() / "victims" / key
    if cache and (folder / "model.safetensors").is_file() and (folder / "train.json").is_file():
        info = read_json(folder / "train.json")
        info["cached"] = True
        return load_checkpoint(folder, device), info
    model = build_model(
        tcfg.model,
        len(classes),
        width=tcfg.width,
        in_channels=x.shape[1],
        dataset=dataset,
        seed=tcfg.seed,
    )
    res = train(model, x, y, tcfg, device=device, desc=desc)
    info = {
        "key": key,
        "train_seconds": round(res.seconds, 2),
        "images_per_second": round(res.images_per_second, 1),
        "history": res.history,
        "cached": False,
    }
    if cache:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{key}."))
        try:
            save_checkpoint(res.model, tmp, extra={"classes": classes, "train": asdict(tcfg)})
            atomic_write_json(tmp / "train.json", info)
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return res.model, info


def train_victim(
    pset: PoisonedSet, tcfg: TrainConfig, device: torch.device | str, cache: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """The victim: a classifier trained on the poisoned set as the attacker left it."""
    dataset = pset.source.get("dataset") or pset.source.get("name")
    return train_classifier(pset.x, pset.y, pset.classes, tcfg, device, dataset, cache)


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
