"""Datasets given as a path: an image folder or an ``.npz`` file.

* Image folder: ``<root>/<class>/*.{png,jpg,jpeg,ppm,bmp}``; when ``<root>`` has ``train/``
  and ``test/`` subfolders the split's subfolder is read (class names from ``train/`` so
  labels agree between splits). Classes are the sorted sub-folder names. Images are
  converted to RGB and resized (bilinear, as a whole) to ``image_size``; without it they
  must all have one size.
* ``.npz`` (loaded with ``allow_pickle=False``): ``x`` uint8 (N, H, W, C) with C in 1, 3, 4
  (or (N, H, W) grayscale) and ``y`` integer labels, or per split ``x_train``/``y_train``/
  ``x_test``/``y_test``; optional ``classes`` (strings). Grayscale is repeated to RGB,
  alpha is dropped.

A folder or file without split subfolders/keys serves both splits (``meta["split_source"]``
says so).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from detox.data.base import ImageDataset
from detox.data.images import (
    IMAGE_EXTENSIONS,
    check_image_size,
    nhwc_to_nchw,
    read_images,
    resize_images,
)
from detox.data.splits import check_split
from detox.errors import DataError

MAX_CLASSES = 100_000  # labels must lie below this (ImageNet-21k has 21,841 classes)


def load_path(
    path: str | os.PathLike, split: str = "train", image_size: int | None = None
) -> ImageDataset:
    """Load ``split`` from an image folder or an ``.npz`` file (see module docstring)."""
    check_split(split)
    size = check_image_size(image_size)
    path = Path(path).expanduser()
    if path.suffix.lower() == ".npz" or path.is_file():
        if not path.exists():
            raise DataError(f"{path}: file not found")
        return load_npz(path, split, size)
    if path.is_dir():
        return load_image_folder(path, split, size)
    raise DataError(
        f"{path}: not found (expected a registered dataset name, an image folder or an .npz file)"
    )


# -- image folders ------------------------------------------------------------------------
def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def load_image_folder(root: Path, split: str = "train", image_size: int | None = None):
    """``<root>/<class>/*.png|jpg|...`` (or ``<root>/<split>/<class>/...``)."""
    root = Path(root)
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    folder = root / split if has_splits else root
    class_root = root / "train" if has_splits else root
    classes = [d.name for d in _class_dirs(class_root)]
    if not classes:
        raise DataError(
            f"{class_root}: no class folders found (expected <class>/<image files>, "
            f"image types {', '.join(IMAGE_EXTENSIONS)})"
        )
    unknown = sorted({d.name for d in _class_dirs(folder)} - set(classes))
    if unknown:
        raise DataError(
            f"{folder}: class folders {unknown} do not exist in {class_root} (classes: {classes})"
        )
    files: list[Path] = []
    labels: list[int] = []
    for i, c in enumerate(classes):
        d = folder / c
        imgs = _images(d) if d.is_dir() else []
        files += imgs
        labels += [i] * len(imgs)
    if not files:
        raise DataError(
            f"{folder}: no images found in its class folders "
            f"(image types {', '.join(IMAGE_EXTENSIONS)})"
        )
    x = read_images(files, image_size, what=str(folder))
    meta = {
        "dataset": root.name,
        "split": split,
        "source": str(root),
        "source_kind": "image-folder",
        "split_source": str(folder) if has_splits else f"{root} (no train/test subfolders)",
        "separate_test_split": has_splits,
        "checksum": "unverified",
        "checksum_detail": "local image folder (no checksum)",
        "image_size": int(x.shape[1]) if x.shape[1] == x.shape[2] else list(x.shape[1:3]),
    }
    return ImageDataset(
        torch.from_numpy(nhwc_to_nchw(x)),
        torch.as_tensor(labels, dtype=torch.int64),
        classes,
        name=f"{root.name}-{split}",
        meta=meta,
    )


# -- .npz ----------------------------------------------------------------------------------
def _to_rgb_nchw(x: np.ndarray, where: str) -> np.ndarray:
    if x.dtype != np.uint8:
        raise DataError(f"{where}: images must be uint8 in [0, 255], got dtype {x.dtype}")
    if x.ndim == 3:  # (N, H, W) grayscale
        x = x[..., None]
    if x.ndim != 4 or x.shape[3] not in (1, 3, 4):
        raise DataError(
            f"{where}: images must have shape (N, H, W, C) with C in (1, 3, 4) "
            f"(channels last), got {x.shape}"
        )
    if x.shape[3] == 1:
        x = np.repeat(x, 3, axis=3)
    elif x.shape[3] == 4:
        x = x[..., :3]
    return nhwc_to_nchw(x)


def load_npz(path: Path, split: str = "train", image_size: int | None = None) -> ImageDataset:
    """``x``/``y`` or ``x_<split>``/``y_<split>`` arrays (+ optional ``classes``)."""
    path = Path(path)
    try:
        f = np.load(path, allow_pickle=False)
        if not hasattr(f, "files"):
            raise DataError(f"{path}: not an .npz archive (expected arrays 'x' and 'y')")
        with f:
            keys = set(f.files)
            if f"x_{split}" in keys and f"y_{split}" in keys:
                kx, ky, split_source = f"x_{split}", f"y_{split}", f"x_{split}/y_{split}"
            elif "x" in keys and "y" in keys:
                kx, ky, split_source = "x", "y", "x/y (the file has no per-split keys)"
            else:
                raise DataError(
                    f"{path}: expected arrays 'x' and 'y' or 'x_{split}' and 'y_{split}', "
                    f"found {sorted(keys)}"
                )
            x, y = f[kx], f[ky]
            classes_arr = f["classes"] if "classes" in keys else None
    except DataError:
        raise
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise DataError(
                f"{path}: not an .npz of plain arrays (it is not a NumPy file, or it holds "
                "pickled Python objects, which are not loaded); store plain arrays, with "
                "class names as a unicode string array"
            ) from e
        raise DataError(f"{path}: not a valid .npz file ({e})") from e
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read .npz file ({e})") from e

    xc = _to_rgb_nchw(x, f"{path}[{kx}]")
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(
            f"{path}[{ky}]: labels must be a 1-D integer array, got {y.dtype} {y.shape}"
        )
    if y.shape[0] != xc.shape[0]:
        raise DataError(f"{path}: {xc.shape[0]} images in '{kx}' but {y.shape[0]} labels in '{ky}'")
    if y.size == 0:
        raise DataError(f"{path}[{ky}]: the dataset is empty")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0:
        raise DataError(f"{path}[{ky}]: labels must be >= 0, got {lo}")
    if classes_arr is not None:
        if classes_arr.ndim != 1 or classes_arr.dtype.kind not in "US":
            raise DataError(f"{path}[classes]: expected a 1-D array of strings")
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in classes_arr.tolist()]
        if hi >= len(classes):
            raise DataError(
                f"{path}[{ky}]: label {hi} but 'classes' names only {len(classes)} classes "
                f"(labels must lie in [0, {len(classes)}))"
            )
    else:
        if hi >= MAX_CLASSES:
            raise DataError(
                f"{path}[{ky}]: label {hi}; labels must be class indices below {MAX_CLASSES:,} "
                "(0 .. number of classes - 1)"
            )
        classes = [str(i) for i in range(hi + 1)]
    xt = torch.from_numpy(xc)
    if image_size is not None and xt.shape[0] > 0:
        xt = resize_images(xt, image_size)
    meta = {
        "dataset": path.stem,
        "split": split,
        "source": str(path),
        "source_kind": "npz",
        "split_source": split_source,
        "separate_test_split": kx == f"x_{split}",
        "checksum": "unverified",
        "checksum_detail": "local .npz file (no checksum)",
        "image_size": int(xt.shape[-1]),
    }
    return ImageDataset(
        xt, torch.from_numpy(y.astype(np.int64)), classes, name=f"{path.stem}-{split}", meta=meta
    )
