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
