"""Image helpers shared by the loaders: reading image files, resizing, layout.

:func:`read_image` (any Pillow image file -> RGB uint8 HWC, optionally resized as a
whole), :func:`read_images` (many files into one array), :func:`resize_images` (batched
antialiased bilinear resize of uint8 NCHW tensors), :func:`nhwc_to_nchw` and the check of
an ``image_size`` argument.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from detox.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".ppm", ".bmp")


def check_image_size(image_size: Any) -> int | None:
    """``None`` or a positive int (else :class:`ConfigError`)."""
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, int | np.integer):
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
    if int(image_size) < 1:
        raise ConfigError(f"image_size must be a positive integer, got {image_size}")
    return int(image_size)


def resize_images(x: torch.Tensor, size: int, batch_size: int = 2048) -> torch.Tensor:
    """Resize uint8 (N, C, H, W) images to ``size`` x ``size``: bilinear, antialiased.

    Batch by batch; uses PyTorch's native uint8 kernel (about 5x faster than float32 and
    within 1 grey level of it), falling back to float32 where that kernel
    is missing. Returns a contiguous uint8 tensor; a no-op when the size already matches.
    """
    size = check_image_size(size)
    if size is None:
        return x
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.dtype != torch.uint8:
        raise DataError(
            "resize_images: expected a uint8 (N, C, H, W) tensor, got "
            f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}"
        )
    if tuple(x.shape[-2:]) == (size, size):
        return x
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    kw = {"size": (size, size), "mode": "bilinear", "align_corners": False, "antialias": True}
    for i in range(0, x.shape[0], batch_size):
        b = x[i : i + batch_size]
        try:
            r = F.interpolate(b, **kw)
        except (RuntimeError, NotImplementedError):  # no uint8 kernel (old torch / 1 channel)
            r = F.interpolate(b.float(), **kw).round_().clamp_(0, 255).to(torch.uint8)
        out[i : i + batch_size] = r
    return out


def read_image(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3); resized as a whole (bilinear) when ``size``.

    Grayscale, palette, RGBA (alpha dropped) and CMYK images are converted to RGB.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16/32-bit grayscale
                arr = np.asarray(im, dtype=np.float64)
                top = 65535.0 if arr.max() > 255 else 255.0
                im2 = Image.fromarray((arr / top * 255).round().astype(np.uint8)).convert("RGB")
            else:
                im2 = im.convert("RGB")
            if size is not None and im2.size != (size, size):
                im2 = im2.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im2, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from e


def read_images(
    files: Sequence[Path], size: int | None, what: str = "images", progress: bool = True
) -> np.ndarray:
    """Read ``files`` into one uint8 (N, H, W, 3) array; sizes must agree unless ``size``."""
    from tqdm.auto import tqdm

    if not files:
        raise DataError(f"{what}: no image files found")
    first = read_image(files[0], size)
    out = np.empty((len(files), *first.shape), dtype=np.uint8)
    out[0] = first
    it = range(1, len(files))
    if progress and len(files) > 2000:
        it = tqdm(it, desc=f"reading {what}", unit="img", disable=None, initial=1)
    for i in it:
        img = read_image(files[i], size)
        if img.shape != first.shape:
            raise DataError(
                f"{what}: images differ in size ({files[0]} is {first.shape[1]}x{first.shape[0]}, "
                f"{files[i]} is {img.shape[1]}x{img.shape[0]}); pass image_size "
                "(--image-size) to resize them all"
            )
        out[i] = img
    return out


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
