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

from detox.config import hp
from detox.defenses.purifiers.base import PURIFIERS, Purifier
from detox.errors import ConfigError


@dataclasses.dataclass
class MedianConfig:
    kernel: int = hp(3, "pixels, odd", "[open]", "window size", range="[3, inf)")
    batch_size: int = hp(512, "images per chunk", range="[1, inf)")
    seed: int = hp(0, "seed", help="unused (deterministic); kept for the purifier interface")

    PRESETS: typing.ClassVar[dict[str, dict[str, Any]]] = {"paper": {}, "smoke": {}}

    def validate(self) -> None:
        """What no declared range says (the range: ``hp``)."""
        if self.kernel % 2 == 0:
            raise ConfigError(f"kernel={self.kernel}: expected an odd size >= 3")


@PURIFIERS.register("median")
class Median(Purifier):
    """``kernel x kernel`` median filter per channel."""

    name = "median"
    Config = MedianConfig

    def _purify_batch(self, x: torch.Tensor, seed: int, start_index: int) -> torch.Tensor:
        k = int(self.config.kernel)
        import kornia  # imported here: the rest of detox's purifiers run without it

        return kornia.filters.median_blur(x, (k, k))
