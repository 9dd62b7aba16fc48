"""Median filtering: the simplest training-free purification baseline.

A ``k x k`` median filter per channel (``kornia.filters.median_blur``; zero padding at the
border, as kornia does) removes small high-contrast patterns such as
BadNets' patch and single pixels, and keeps smooth blends and warps; it costs clean
accuracy as it blurs. Deterministic (no seed). A baseline for SampDetox's table; UltraClean
uses a 2x2x3 median as its denoiser (``detox.defenses.detectors.ultraclean``).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import torch

from detox.defenses.purifiers.base import PURIFIERS, Purifier
from detox.errors import ConfigError


@dataclasses.dataclass
class MedianConfig:
    kernel: int = 3  # window size, pixels (odd) [open]
    batch_size: int = 512  # images per chunk
    seed: int = 0  # unused (deterministic); kept for the purifier interface

    PRESETS: typing.ClassVar[dict[str, dict[str, Any]]] = {"paper": {}, "smoke": {}}

    def validate(self) -> None:
        if self.kernel < 3 or self.kernel % 2 == 0:
            raise ConfigError(f"kernel={self.kernel}: expected an odd size >= 3")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1")


@PURIFIERS.register("median")
class Median(Purifier):
    """``kernel x kernel`` median filter per channel."""

    name = "median"
    Config = MedianConfig

    def _purify_batch(self, x: torch.Tensor, seed: int, start_index: int) -> torch.Tensor:
        k = int(self.config.kernel)
        import kornia  # imported here: the rest of detox's purifiers run without it

        return kornia.filters.median_blur(x, (k, k))
