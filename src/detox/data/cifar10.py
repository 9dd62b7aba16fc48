"""CIFAR-10 from the official "python version" archive (or its extracted folder).

Accepted in the data directory: ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``
(official, md5-checked), ``cifar-10-python.tar.xz`` (the offline copy, sha256-checked),
``.tgz``, ``.tar.bz2`` or ``.tar``. The md5 of every member (``data_batch_1..5``,
``test_batch``, ``batches.meta``) is checked against the official values, at extraction
for archives and on load for folders; a mismatch raises :class:`ChecksumError`. Batches are
unpickled with the restricted :class:`~detox.data.safe_pickle.SafeUnpickler`.

The decoded uint8 arrays are cached as ``.npy`` under ``cache_dir()/decoded`` (keyed by the
official member checksums), so later loads of the 50,000 training images take well under
a second.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from detox.data.arrays import cached_arrays
from detox.data.base import ImageDataset
from detox.data.fetch import Checksum, Resource, fetch, file_digest
from detox.data.images import check_image_size, resize_images
from detox.data.registry import DatasetFacts, register_dataset
from detox.data.safe_pickle import safe_load
from detox.data.splits import check_split
from detox.errors import ChecksumError, DataError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
# sha256 of the offline copy (the official archive re-packed with xz), see shared README
XZ_SHA256 = "cc0bdd021238369bbe0d6a70acc6cb9f2ad507e36ffb2cd3d40401cc9e4b21e9"
FOLDER = "cifar-10-batches-py"

MEMBER_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
SPLIT_MEMBERS = {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "test": ["test_batch"],
}
SPLIT_SIZES = {"train": 50000, "test": 10000}
FACTS = DatasetFacts(
    name="cifar10",
    aliases=("cifar-10", "cifar"),
    num_classes=10,
    image_size=32,
    # channel mean / std of the 50,000 training images (measured; tests/test_data.py)
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    diffusion="ddpm-cifar10-32",
)
_FORMAT = "v1"
# decoded-cache key: the content is fixed by the official member checksums
_KEY_SOURCE = _FORMAT + "".join(sorted(MEMBER_MD5.values()))
_CACHE_KEY = hashlib.sha256(_KEY_SOURCE.encode()).hexdigest()[:12]


def verify_members(root: Path, memo: bool = True) -> str:
    """Check the md5 of all seven members in ``root`` against the official values."""
    for name, expected in MEMBER_MD5.items():
        p = root / name
        if not p.is_file():
            raise DataError(
                f"{root}: CIFAR-10 file {name} is missing (expected the official "
                f"'{FOLDER}' folder with {', '.join(MEMBER_MD5)})"
            )
        actual = file_digest(p, "md5", memo=memo)
        if actual != expected:
            raise ChecksumError(
                f"{p}: md5 checksum mismatch: expected {expected} (official CIFAR-10 value), "
                f"actual {actual}. The file is corrupt or modified; replace it with the "
                f"official copy ({URL})."
            )
    return f"md5 of all {len(MEMBER_MD5)} CIFAR-10 members match the official values"


RESOURCE = Resource(
    dataset="cifar10",
    key="cifar10",
    marker="batches.meta",
    folders=(FOLDER, ""),
    archives={
        "cifar-10-python.tar.gz": Checksum("md5", ARCHIVE_MD5),
        "cifar-10-python.tar.xz": Checksum("sha256", XZ_SHA256),
        "cifar-10-python.tgz": None,
        "cifar-10-python.tar.bz2": None,
        "cifar-10-python.tar": None,
    },
    url=URL,
    download_name="cifar-10-python.tar.gz",
    subdirs=("cifar10", "cifar-10"),
    validate=verify_members,
    description="CIFAR-10 python version",
)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = safe_load(path, encoding="latin1")
    if not isinstance(d, dict) or "data" not in d or "labels" not in d:
        raise DataError(f"{path}: not a CIFAR-10 batch (expected a dict with 'data' and 'labels')")
    data, labels = d["data"], np.asarray(d["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{path}: 'data' must be a uint8 (N, 3072) array")
    if data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise DataError(
            f"{path}: expected 'data' (N, 3072) and N labels, got {data.shape} and {labels.shape}"
        )
    if labels.dtype.kind not in "iu":
        raise DataError(f"{path}: labels must be integers, got {labels.dtype}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_classes(root: Path) -> list[str]:
    meta = safe_load(root / "batches.meta", encoding="latin1")
    names = meta.get("label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
        raise DataError(f"{root / 'batches.meta'}: expected a dict with a 'label_names' list")
    return list(names)


def _decode(root: Path, split: str) -> dict[str, np.ndarray]:
    parts = [_read_batch(root / m) for m in SPLIT_MEMBERS[split]]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    if len(x) != SPLIT_SIZES[split]:
        raise DataError(
            f"{root}: CIFAR-10 {split} has {len(x)} images, expected {SPLIT_SIZES[split]}"
        )
    return {"x": x, "y": y}


@register_dataset(FACTS)
def load_cifar10(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
) -> ImageDataset:
    """CIFAR-10 ``split`` (50,000 train / 10,000 test, 3x32x32, 10 classes)."""
    check_split(split)
    size = check_image_size(image_size)
    loc = fetch(RESOURCE, data_dir)
    if loc.kind == "folder":  # archives were verified when extracted
        loc.detail = verify_members(loc.root)
        loc.checksum = "verified"
    classes = read_classes(loc.root)
    arrays, hit = cached_arrays(f"cifar10-{_CACHE_KEY}-{split}", lambda: _decode(loc.root, split))
    x, y = arrays["x"], arrays["y"]
    xt = torch.from_numpy(x)
    if size is not None:
        xt = resize_images(xt, size)
    meta = {
        "dataset": FACTS.name,
        "split": split,
        **loc.meta(),
        "image_size": int(xt.shape[-1]),
        "native_size": FACTS.image_size,
        "decoded_cache": hit,
    }
    return ImageDataset(xt, torch.from_numpy(y), classes, name=f"{FACTS.name}-{split}", meta=meta)
