"""Tiny ImageNet (200 classes, 64x64) in its official layout.

``tiny-imagenet-200/`` (or ``tiny-imagenet-200.zip``, md5-checked) holding ``wnids.txt``,
``words.txt``, ``train/<wnid>/images/*.JPEG`` and ``val/images/*.JPEG`` with
``val/val_annotations.txt``. Split ``"test"`` is the official validation set (the official
test set has no labels). Classes are the wnids in sorted order; their names are the first
synonym in ``words.txt`` (the wnid where it is missing). Decoded arrays are cached.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from detox.data.arrays import cached_arrays, listing_key
from detox.data.base import ImageDataset
from detox.data.fetch import Checksum, Resource, fetch
from detox.data.images import IMAGE_EXTENSIONS, check_image_size, nhwc_to_nchw, read_images
from detox.data.registry import DatasetFacts, register_dataset
from detox.data.splits import check_split
from detox.errors import DataError

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
ZIP_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
FACTS = DatasetFacts(
    name="tinyimagenet",
    aliases=("tiny-imagenet", "tiny-imagenet-200", "tinyimagenet200"),
    num_classes=200,
    image_size=64,
    # the usual published channel statistics of the 100,000 training images
    mean=(0.4802, 0.4481, 0.3975),
    std=(0.2770, 0.2691, 0.2821),
)
NATIVE_SIZE = FACTS.image_size
_FORMAT = "v1"

RESOURCE = Resource(
    dataset="tinyimagenet",
    key="tinyimagenet",
    marker="wnids.txt",
    folders=("tiny-imagenet-200", ""),
    archives={"tiny-imagenet-200.zip": Checksum("md5", ZIP_MD5)},
    url=URL,
    download_name="tiny-imagenet-200.zip",
    subdirs=("tinyimagenet", "tiny-imagenet"),
    description="Tiny ImageNet 200",
)


def _read_lines(path: Path) -> list[str]:
    try:
        return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e


def read_classes(root: Path) -> tuple[list[str], list[str]]:
    """(wnids sorted, display names) from ``wnids.txt`` and ``words.txt``."""
    wnids = sorted(set(_read_lines(root / "wnids.txt")))
    if not wnids:
        raise DataError(f"{root / 'wnids.txt'}: no class ids listed")
    words: dict[str, str] = {}
    if (root / "words.txt").is_file():
        for ln in _read_lines(root / "words.txt"):
            wnid, _, text = ln.partition("\t")
            words[wnid.strip()] = text.split(",")[0].strip()
    names = [words.get(w) or w for w in wnids]
    dup = {n for n in names if names.count(n) > 1}
    names = [f"{n} ({w})" if n in dup else n for n, w in zip(names, wnids)]
    return wnids, names


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def _split_files(root: Path, split: str, wnids: list[str]) -> tuple[list[Path], list[int]]:
    index = {w: i for i, w in enumerate(wnids)}
    files: list[Path] = []
    labels: list[int] = []
    if split == "train":
        for w in wnids:
            d = root / "train" / w / "images"
            if not d.is_dir():
                raise DataError(f"{root}: missing training folder train/{w}/images")
            imgs = _images_in(d)
            files += imgs
            labels += [index[w]] * len(imgs)
        return files, labels
    ann = root / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise DataError(f"{root}: missing val/val_annotations.txt (labels of the test split)")
    for n, ln in enumerate(_read_lines(ann), 1):
        parts = ln.split("\t")
        if len(parts) < 2:
            raise DataError(f"{ann}:{n}: expected '<file>\\t<wnid>...', got {ln!r}")
        if parts[1] not in index:
            raise DataError(f"{ann}:{n}: class {parts[1]!r} is not in wnids.txt")
        files.append(root / "val" / "images" / parts[0])
        labels.append(index[parts[1]])
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(
            f"{root}: {len(missing)} validation images listed in val_annotations.txt are "
            f"missing, e.g. {missing[0]}"
        )
    return files, labels


@register_dataset(FACTS)
def load_tinyimagenet(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
) -> ImageDataset:
    """Tiny ImageNet ``split`` (train 100,000 / test = official val 10,000; 200 classes)."""
    check_split(split)
    size = check_image_size(image_size) or NATIVE_SIZE
    loc = fetch(RESOURCE, data_dir)
    wnids, names = read_classes(loc.root)
    files, labels = _split_files(loc.root, split, wnids)
    if not files:
        raise DataError(f"{loc.root}: the Tiny ImageNet {split} split has no images")
    key = listing_key(files, loc.root, _FORMAT, split, size, wnids)

    def build() -> dict[str, np.ndarray]:
        x = read_images(files, size, what=f"Tiny ImageNet {split}")
        return {"x": nhwc_to_nchw(x), "y": np.asarray(labels, dtype=np.int64)}

    arrays, hit = cached_arrays(f"tinyimagenet-{split}-{size}-{key}", build)
    meta = {
        "dataset": FACTS.name,
        "split": split,
        **loc.meta(),
        "wnids": wnids,
        "image_size": size,
        "decoded_cache": hit,
    }
    return ImageDataset(
        torch.from_numpy(arrays["x"]),
        torch.from_numpy(arrays["y"]),
        names,
        name=f"{FACTS.name}-{split}",
        meta=meta,
    )
