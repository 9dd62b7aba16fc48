"""BaDLoss "Single-pixel" (Alex et al., ICLR 2025; authors' ``BackdoorPatch(single_pixel_backdoor=True)``):
pixel (H-2, W-2) set to 1 in every channel, dirty label (METHODS.md section 3). BaDLoss
does not use it on large images; here it stays one pixel at every size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detox.attacks.base import Attack, AttackConfig, hp, register


@dataclass
class SinglePixelConfig(AttackConfig):
    value: float = hp(1.0, "intensity in [0, 1]", "[code] backdoor_pix_val 1.0", range="[0, 1]")
    offset: int = hp(
        2, "pixels from the bottom and right edges", "[code] pixel (H-2, W-2)", range="[1, inf)"
    )


@register
class SinglePixel(Attack):
    name = "single-pixel"
    aliases = ("single_pixel", "single_pix", "pixel")
    Config = SinglePixelConfig
    config: SinglePixelConfig

    def min_size(self, shape):
        return self.config.offset

    def stamp(self, shape):
        h, w = shape[-2:]
        o = self.config.offset
        return (
            torch.tensor([h - o]),
            torch.tensor([w - o]),
            torch.tensor([float(self.config.value)]),
        )
