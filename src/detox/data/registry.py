"""Dataset registry: ``load_dataset(name, split)`` for every supported source.

Each loader module registers a function ``loader(split, data_dir, image_size) ->
ImageDataset`` under its name. Besides registered names, ``load_dataset`` accepts a path:
a folder of ``<class>/*.png|jpg`` images or an ``.npz`` file (see :mod:`detox.data.folder`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from detox.data.base import ImageDataset
from detox.errors import ConfigError
from detox.registry import Registry

Loader = Callable[..., ImageDataset]
DATASETS: Registry[Loader] = Registry("dataset")
SPLITS = ("train", "test")


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
) -> ImageDataset:
    """Load ``split`` of dataset ``name`` as uint8 NCHW tensors.

    ``name`` is a registered dataset (``detox data info`` lists them) or a path to an image
    folder / ``.npz`` file. ``image_size`` resizes (square) where the loader supports it.
    """
    if split not in SPLITS:
        raise ConfigError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    if name not in DATASETS and (Path(name).expanduser().exists() or name.endswith(".npz")):
        from detox.data.folder import load_path

        return load_path(Path(name).expanduser(), split=split, image_size=image_size)
    loader = DATASETS.get(name)
    return loader(split=split, data_dir=data_dir, image_size=image_size)


def load_splits(cfg, data_dir: str | os.PathLike | None = None):
    """Train and test :class:`ImageDataset` for a :class:`~detox.config.DataConfig`,
    each cut to its seeded, class-balanced subset when one is set."""
    from detox.data.base import stratified_subsample

    out = []
    for split, n in (("train", cfg.train_subset), ("test", cfg.test_subset)):
        ds = load_dataset(cfg.dataset, split, data_dir=data_dir, image_size=cfg.image_size)
        if n is not None and n < len(ds):
            idx = stratified_subsample(ds.y, n, seed=cfg.seed, num_classes=ds.num_classes)
            ds = ds.subset(idx)
            ds.meta["subset"] = {"n": n, "seed": cfg.seed}
        out.append(ds)
    return out[0], out[1]
