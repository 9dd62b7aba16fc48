"""Dataset registry: ``load_dataset(name, split)`` for every supported source, and the
facts of each registered dataset.

Each loader module registers a function ``loader(split, data_dir, image_size) ->
ImageDataset`` together with the dataset's :class:`DatasetFacts` (canonical name, aliases,
classes, native image size, channel statistics, the diffusion model detox ships for it)
with :func:`register_dataset`, beside the loader. Everything else that depends on which
dataset it is (a classifier's normalisation, SampDetox's default diffusion model) asks
:func:`dataset_facts`, which accepts any alias and the names loaders write
(``cifar10-test``, ``tinyimagenet-train``). Besides registered names, ``load_dataset``
accepts a path: a folder of ``<class>/*.png|jpg`` images or an ``.npz`` file (see
:mod:`detox.data.folder`); such datasets have no facts.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from detox.data.base import ImageDataset, stratified_subsample
from detox.data.folder import load_path
from detox.data.images import resize_images
from detox.data.poisoned import PoisonedSet
from detox.data.splits import SPLITS
from detox.errors import ConfigError, DataError
from detox.registry import Registry

Loader = Callable[..., ImageDataset]
DATASETS: Registry[Loader] = Registry("dataset")


@dataclass(frozen=True)
class DatasetFacts:
    """What is true of a registered dataset, whoever asks.

    ``name``: canonical name (what loaders write as ``meta["dataset"]``, and
    ``<name>-<split>`` as the dataset's name); ``aliases``: other accepted names;
    ``num_classes``; ``image_size``: native side in pixels (square); ``channels``;
    ``mean`` / ``std``: per-channel statistics of the training split on [0, 1] images (a
    classifier's input normalisation); ``diffusion``: folder under ``detox/weights`` of the
    diffusion model detox ships for it, or None.
    """

    name: str
    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int = 3
    aliases: tuple[str, ...] = ()
    diffusion: str | None = None

    def __post_init__(self) -> None:
        if self.name != self.name.lower() or any(a != a.lower() for a in self.aliases):
            raise ConfigError(f"dataset {self.name!r}: names and aliases must be lower-case")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(
                f"dataset {self.name!r}: mean and std need one value per channel "
                f"({self.channels}), got {len(self.mean)} and {len(self.std)}"
            )
        if min(self.std) <= 0 or self.num_classes < 2 or self.image_size < 1:
            raise ConfigError(f"dataset {self.name!r}: std > 0, >= 2 classes, size >= 1")

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


_FACTS: dict[str, DatasetFacts] = {}  # canonical name or alias -> facts


def register_dataset(facts: DatasetFacts) -> Callable[[Loader], Loader]:
    """Decorator: register ``loader`` under ``facts.name`` and its aliases, with its facts."""

    def deco(loader: Loader) -> Loader:
        DATASETS.register(facts.name, *facts.aliases)(loader)
        for key in facts.names:
            if key in _FACTS and _FACTS[key] is not facts:
                raise ConfigError(f"dataset {key!r} is registered twice")
            _FACTS[key] = facts
        return loader

    return deco


def dataset_facts(name: str | None) -> DatasetFacts | None:
    """The facts of dataset ``name``: a registered name or alias (any case), or the name a
    loader gives a split (``cifar10-test``, ``tiny-imagenet-train``). None for anything
    else (image folders, ``.npz`` files, unknown names, None)."""
    key = str(name or "").strip().lower()
    if key in _FACTS:
        return _FACTS[key]
    base, _, split = key.rpartition("-")
    return _FACTS.get(base) if split in SPLITS else None


def registered_facts() -> list[DatasetFacts]:
    """The facts of every registered dataset, by canonical name."""
    return sorted({id(f): f for f in _FACTS.values()}.values(), key=lambda f: f.name)


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
) -> ImageDataset:
    """Load ``split`` of dataset ``name`` as uint8 NCHW tensors.

    ``name`` is a registered dataset (``detox data info`` lists them), a path to an image
    folder / ``.npz`` file, or a PoisonedSet artefact folder (:func:`load_artefact`: the
    output of ``detox poison``, the kept set of ``detox scan``). ``image_size`` resizes
    (square) where the loader supports it.
    """
    if split not in SPLITS:
        raise ConfigError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    if name not in DATASETS and (Path(name).expanduser() / "manifest.json").is_file():
        return load_artefact(Path(name).expanduser(), split, image_size)
    if name not in DATASETS and (Path(name).expanduser().exists() or name.endswith(".npz")):
        return load_path(Path(name).expanduser(), split=split, image_size=image_size)
    loader = DATASETS.get(name)
    return loader(split=split, data_dir=data_dir, image_size=image_size)


def load_artefact(path: Path, split: str = "train", image_size: int | None = None) -> ImageDataset:
    """A PoisonedSet artefact (``detox poison``, the kept set of ``detox scan``, ...) as a
    dataset: ``train`` = its training images with the labels as trained, ``test`` = the
    clean test set it carries. The meta keeps the source dataset's name, so models get
    that dataset's normalisation."""
    pset = PoisonedSet.load(path)
    meta = {**pset.source, "source": str(path), "source_kind": "poisoned-set", "split": split}
    if split == "train":
        x, y = pset.x, pset.y
    elif pset.test is None:
        raise DataError(f"{path}: the artefact carries no test set (split {split!r})")
    else:
        x, y = pset.test.x, pset.test.y
    if image_size is not None and x.shape[-1] != image_size:
        x = resize_images(x, image_size)
    return ImageDataset(x, y, list(pset.classes), f"{path.name}-{split}", meta)


def load_splits(cfg, data_dir: str | os.PathLike | None = None):
    """Train and test :class:`ImageDataset` for a :class:`~detox.config.DataConfig`,
    each cut to its seeded, class-balanced subset when one is set."""
    out = []
    for split, n in (("train", cfg.train_subset), ("test", cfg.test_subset)):
        ds = load_dataset(cfg.dataset, split, data_dir=data_dir, image_size=cfg.image_size)
        if n is not None and n < len(ds):
            idx = stratified_subsample(ds.y, n, seed=cfg.seed, num_classes=ds.num_classes)
            ds = ds.subset(idx)
            ds.meta["subset"] = {"n": n, "seed": cfg.seed}
        out.append(ds)
    return out[0], out[1]
