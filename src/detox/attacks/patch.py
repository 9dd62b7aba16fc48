"""BaDLoss "Patch" (Alex et al., "Protecting against simultaneous data poisoning attacks",
ICLR 2025; authors' ``BackdoorPatch``): four white pixels near the bottom-right corner,
dirty label.

Pixels (H-2, W-2), (H-4, W-2), (H-2, W-4), (H-3, W-3) set to 1 in every channel
(METHODS.md section 3). Large images (>= 64 px): four ``square_large`` x ``square_large``
white squares, the same pattern scaled by the square size (squares whose top-left corners
are at (H - 2s, W - 2s), (H - 4s, W - 2s), (H - 2s, W - 4s), (H - 3s, W - 3s)) [open:
METHODS gives "four 8x8 white squares", the placement is ours].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detox.attacks.base import Attack, AttackConfig, hp, register

#: (rows, cols) back from the bottom-right corner of the four pixels [code]
OFFSETS = ((2, 2), (4, 2), (2, 4), (3, 3))


@dataclass
class PatchConfig(AttackConfig):
    value: float = hp(1.0, "intensity in [0, 1]", "[code] backdoor_pix_val 1.0", range="[0, 1]")
    square_large: int = hp(
        8, "pixels", "[METHODS] large images: four 8x8 white squares", range="[1, inf)"
    )


@register
class Patch(Attack):
    name = "patch"
    aliases = ("badloss-patch",)
    Config = PatchConfig
    config: PatchConfig

    def square(self, shape) -> int:
        return self.config.square_large if self.is_large(shape) else 1

    def min_size(self, shape):
        return 4 * self.square(shape)

    def stamp(self, shape):
        h, w = shape[-2:]
        s = self.square(shape)
        d = torch.arange(s)
        rows, cols = [], []
        for dr, dc in OFFSETS:
            rr, cc = torch.meshgrid(h - dr * s + d, w - dc * s + d, indexing="ij")
            rows.append(rr.flatten())
            cols.append(cc.flatten())
        rows, cols = torch.cat(rows), torch.cat(cols)
        return rows, cols, torch.full((len(rows),), float(self.config.value))
