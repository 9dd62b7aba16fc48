"""WaNet (Nguyen & Tran, "WaNet - Imperceptible Warping-based Backdoor Attack", ICLR 2021):
a fixed smooth warping field applied with ``grid_sample``, dirty label.

As the authors' code: a (2, k, k) uniform [-1, 1] field, divided by its mean absolute value,
upsampled bicubically to the image size; the sampling grid is
``clamp((identity + s * field / size) * grid_rescale, -1, 1)`` (bilinear, align_corners).
k 4, s 0.5, grid_rescale 1 (METHODS.md section 4). For non-square images the x offsets are
divided by the width and the y offsets by the height (the code divides both by the height).

Noise mode: ``cross_ratio * n_poisoned`` extra training examples (other images) are warped
with the same grid plus per-pixel random noise ``U(-1, 1) / size`` and keep their true
labels; :func:`~detox.attacks.poison` records them as ``extra`` in the attack spec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from detox.attacks.base import Attack, AttackConfig, hp, register


@dataclass
class WaNetConfig(AttackConfig):
    k: int = hp(4, "control points per side", "[paper] k 4", range="[2, inf)")
    s: float = hp(0.5, "warping strength", "[paper] s 0.5", range="[0, inf)")
    grid_rescale: float = hp(1.0, "factor", "[code] grid_rescale 1", range="(0, inf)")
    cross_ratio: float = hp(
        2.0, "x number poisoned", "[paper] noise mode, cross ratio 2 (0 = off)", range="[0, inf)"
    )


@register
class WaNet(Attack):
    name = "wanet"
    Config = WaNetConfig
    config: WaNetConfig
    extra_kind = "noise"

    def min_size(self, shape):
        return 2

    def _grid(self, g: torch.Generator, c: int, h: int, w: int) -> torch.Tensor:
        k = self.config.k
        ins = torch.rand(1, 2, k, k, generator=g) * 2 - 1
        ins = ins / ins.abs().mean()
        field = F.interpolate(ins, size=(h, w), mode="bicubic", align_corners=True)
        field = field.permute(0, 2, 3, 1)  # 1 h w 2 (x offset, y offset)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        identity = torch.stack((xs, ys), dim=-1).unsqueeze(0)
        scale = torch.tensor([w, h], dtype=torch.float32)
        grid = (identity + self.config.s * field / scale) * self.config.grid_rescale
        return grid.clamp(-1, 1)

    def _warp(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        if grid.shape[0] == 1:
            grid = grid.expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    def _trigger(self, x, *, train, generator):
        return self._warp(x, self.fixed("grid", tuple(x.shape[1:]), x, self._grid))

    def n_extra(self, n_poisoned, n_total):
        return int(math.floor(self.config.cross_ratio * n_poisoned + 1e-9))

    def _extra(self, x, *, generator):
        b, _, h, w = x.shape
        grid = self.fixed("grid", tuple(x.shape[1:]), x, self._grid)
        noise = (torch.rand(b, h, w, 2, generator=generator) * 2 - 1).to(x.device, x.dtype)
        scale = torch.tensor([w, h], device=x.device, dtype=x.dtype)
        return self._warp(x, (grid + noise / scale).clamp(-1, 1))
