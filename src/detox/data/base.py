"""The in-memory dataset: uint8 NCHW images, int64 labels, class names.

Images stay uint8 in memory (50,000 CIFAR-10 images = 150 MB) and are converted to float
on the device batch by batch with :func:`to_float`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from detox.errors import DataError


def to_float(x: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 [0,255] -> float32 [0,1] on ``device`` (float input is passed through)."""
    if device is not None:
        x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [0,1] -> uint8 [0,255] with rounding (the inverse of :func:`to_float`)."""
    if x.dtype == torch.uint8:
        return x
    return x.clamp(0, 1).mul(255.0).round_().to(torch.uint8)


def validate_images_labels(
    x: Any, y: Any, num_classes: int | None = None, what: str = "dataset"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check and convert images (uint8 N,C,H,W) and labels (int64 N).

    Raises :class:`DataError` naming ``what`` and the expectation on any mismatch.
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(y, np.ndarray | list | tuple):
        y = torch.as_tensor(np.asarray(y))
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise DataError(f"{what}: images and labels must be tensors or numpy arrays")
    if x.dtype != torch.uint8:
        raise DataError(f"{what}: images must be uint8 in [0, 255], got dtype {x.dtype}")
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(
            f"{what}: images must have shape (N, C, H, W) with C in (1, 3), got {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise DataError(f"{what}: the dataset is empty")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(
            f"{what}: labels must have shape ({x.shape[0]},) to match the images, got {tuple(y.shape)}"
        )
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise DataError(f"{what}: labels must be integers, got dtype {y.dtype}")
    y = y.to(torch.int64)
    if int(y.min()) < 0 or (num_classes is not None and int(y.max()) >= num_classes):
        raise DataError(
            f"{what}: labels must lie in [0, {num_classes}), got range [{int(y.min())}, {int(y.max())}]"
        )
    return x.contiguous(), y.contiguous()


@dataclass
class ImageDataset:
    """Images (uint8, N x C x H x W), labels (int64, N) and class names.

    ``meta`` carries provenance: dataset name, split, source files and checksums.
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    name: str = "dataset"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.classes:
            raise DataError(f"{self.name}: class names must not be empty")
        self.x, self.y = validate_images_labels(
            self.x, self.y, num_classes=len(self.classes), what=self.name
        )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def subset(self, idx: torch.Tensor | np.ndarray | list[int], name: str | None = None):
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.int64)
        return ImageDataset(
            self.x[idx], self.y[idx], list(self.classes), name or self.name, dict(self.meta)
        )

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.y, minlength=self.num_classes)

    def batches(
        self, batch_size: int, device: torch.device | str = "cpu"
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Float [0,1] image batches and label batches on ``device``, in order."""
        for i in range(0, len(self), batch_size):
            yield (
                to_float(self.x[i : i + batch_size], device),
                self.y[i : i + batch_size].to(device),
            )


def stratified_subsample(
    y: torch.Tensor, n: int, seed: int, num_classes: int | None = None
) -> torch.Tensor:
    """Seeded, class-balanced sample of ``n`` indices (sorted); all when n >= len(y)."""
    if n >= len(y):
        return torch.arange(len(y))
    k = num_classes or int(y.max()) + 1
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(len(y), generator=g)
    per = [perm[y[perm] == c] for c in range(k)]
    quota = n // k
    chosen = [p[:quota] for p in per]
    rest = torch.cat([p[quota:] for p in per])
    need = n - sum(len(c) for c in chosen)
    if need > 0:
        rest = rest[torch.randperm(len(rest), generator=g)[:need]]
        chosen.append(rest)
    return torch.cat(chosen).sort().values
