"""Frequency trigger: FTrojan (Wang et al., "An Invisible Black-box Backdoor Attack through
Frequency Domain", ECCV 2022) as used by BaDLoss, dirty label.

Pipeline [code, BaDLoss ``FrequencyAttack``]: RGB -> YCrCb (OpenCV convention, 0-255
scale), 2-D DCT on each 32x32 block, add ``magnitude`` to the coefficients (15, 15) and
(31, 31) of the Cr and Cb channels of every block, inverse DCT, back to RGB.
magnitude 30 on 32-px images, 90 on large images (METHODS.md section 3; the Imagenette code
uses 120).

Because the DCT and the colour transform are linear, the pipeline adds one fixed pattern:
``x' = x + RGB(IDCT(magnitude * e_pos))``. The attack builds that pattern once per image
shape with the DCT matrix (torch matmuls) and adds it; :func:`frequency_pipeline` runs the
full pipeline and is kept to test the equivalence. Unlike the authors' code, nothing is
rounded or wrapped to uint8 between the steps (their ``astype(uint8)`` after the inverse
DCT truncates and wraps around). Only whole blocks are triggered when a side is not a
multiple of the block size. Grayscale images get the trigger on their single channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detox.attacks.base import Attack, AttackConfig, hp, register
from detox.attacks.ops import RGB2YCRCB, block_dct, dct_matrix, rgb_to_ycrcb, ycrcb_to_rgb
from detox.errors import ConfigError


@dataclass
class FrequencyConfig(AttackConfig):
    magnitude: float = hp(30.0, "DCT coefficient, 0-255 scale", "[code] BaDLoss magnitude 30")
    magnitude_large: float | None = hp(
        90.0, "DCT coefficient, 0-255 scale", "[METHODS] 90 on large images"
    )
    block: int = hp(32, "pixels", "[code] DCT window 32", range="[1, inf)")
    positions: tuple[int, ...] = hp(
        (15, 15, 31, 31),
        "(row, col) pairs in a block",
        "[code] coefficients (15,15), (31,31)",
        range="[0, inf)",
    )

    def validate(self) -> None:
        super().validate()
        pos = tuple(self.positions)
        if len(pos) == 0 or len(pos) % 2:
            raise ConfigError("frequency: positions must be (row, col) pairs, e.g. 15,15,31,31")
        if any(not 0 <= p < self.block for p in pos):
            raise ConfigError(f"frequency: positions {pos} must lie in [0, block={self.block})")


def _coefficients(block: int, positions: tuple[int, ...], magnitude: float) -> torch.Tensor:
    e = torch.zeros(block, block, dtype=torch.float64)
    for r, c in zip(positions[0::2], positions[1::2]):
        e[r, c] += magnitude
    return e


def frequency_pipeline(
    x: torch.Tensor, magnitude: float, positions=(15, 15, 31, 31), block: int = 32
) -> torch.Tensor:
    """The literal pipeline on (B, 3, H, W) [0, 1] images (H, W multiples of ``block``):
    YCrCb, block DCT, add, inverse DCT, RGB. No clamping."""
    d = dct_matrix(block).to(x.device)
    y = rgb_to_ycrcb(x.double() * 255.0)
    coef = block_dct(y, d)
    b, c, h, w = coef.shape
    add = _coefficients(block, tuple(positions), magnitude).to(x.device)
    tiled = add.repeat(h // block, w // block)
    coef[:, 1:3] += tiled
    return (ycrcb_to_rgb(block_dct(coef, d, inverse=True)) / 255.0).to(x.dtype)


@register
class Frequency(Attack):
    name = "frequency"
    aliases = ("ftrojan", "freq")
    Config = FrequencyConfig
    config: FrequencyConfig

    def min_size(self, shape):
        return self.config.block

    def _pattern(self, g, c: int, h: int, w: int, magnitude: float) -> torch.Tensor:
        n = self.config.block
        d = dct_matrix(n)
        spatial = d.T @ _coefficients(n, tuple(self.config.positions), magnitude) @ d  # n x n
        hb, wb = h // n, w // n
        tile = torch.zeros(h, w, dtype=torch.float64)
        tile[: hb * n, : wb * n] = spatial.repeat(hb, wb)
        if c == 1:
            return (tile / 255.0).float().unsqueeze(0)
        # (dY, dCr, dCb) = (0, tile, tile) -> RGB, the offsets cancel
        inv = torch.linalg.inv(RGB2YCRCB)
        delta = inv[:, 1] + inv[:, 2]  # RGB response to a unit change of Cr and Cb
        return (delta.view(3, 1, 1) * tile / 255.0).float()

    def affine(self, shape, like, train):
        mag = float(self.param("magnitude", shape))
        return 1.0, self.fixed(
            f"pattern-{mag}", shape, like, lambda g, c, h, w: self._pattern(g, c, h, w, mag)
        )
