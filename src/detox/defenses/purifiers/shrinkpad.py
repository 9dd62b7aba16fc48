"""ShrinkPad: a classic, training-free input-transformation baseline.

Li et al., "Backdoor Attack in the Physical Space" / "Rethinking the Trigger of Backdoor
Attack" (2021), as used by BackdoorBox's ``ShrinkPad``: shrink the image by ``shrink``
pixels per side-pair (bilinear, antialiased) and zero-pad it back to its size at a random
offset. A trigger learned at a fixed position and scale (BadNets) is moved and resized;
blending and warping triggers are mostly kept. No model, no training: the baseline next
to which SampDetox's diffusion purification is measured, with the purifiers the SampDetox
paper compares against (``zip``, ``sancdifi``, ``bdmae``) and ``lite-bd``.

Settings: ``shrink`` = 4 pixels of 32 [BackdoorBox default pad = 4]; offsets are drawn
per image from ``(seed, position)`` (:class:`~detox.defenses.purifiers.base.NoiseStreams`'s
rule), so results do not depend on batching.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import torch
import torch.nn.functional as F

from detox.config import hp
from detox.defenses.purifiers.base import PURIFIERS, Purifier
from detox.errors import ConfigError
from detox.utils.seed import derive_seed


@dataclasses.dataclass
class ShrinkPadConfig:
    shrink: int = hp(
        4,
        "pixels",
        "[BackdoorBox]",
        "removed from height and width before padding back",
        range="[1, inf)",
    )
    fill: float = hp(
        0.0, "intensity", "[BackdoorBox: 0]", "value of the padded border", range="[0, 1]"
    )
    batch_size: int = hp(512, "images per chunk", range="[1, inf)")
    seed: int = hp(0, "seed", help="offset seed (per image: derived from seed and position)")

    PRESETS: typing.ClassVar[dict[str, dict[str, Any]]] = {"paper": {}, "smoke": {}}


@PURIFIERS.register("shrinkpad")
class ShrinkPad(Purifier):
    """Shrink by ``shrink`` pixels, pad back at a seeded random offset per image."""

    name = "shrinkpad"
    Config = ShrinkPadConfig

    def _purify_batch(self, x: torch.Tensor, seed: int, start_index: int) -> torch.Tensor:
        b, c, h, w = x.shape
        s = int(self.config.shrink)
        if s >= min(h, w):
            raise ConfigError(f"shrinkpad: shrink={s} leaves nothing of {h}x{w} images")
        small = F.interpolate(x, size=(h - s, w - s), mode="bilinear", antialias=True)
        offsets = torch.tensor(
            [
                [derive_seed(seed, "shrinkpad", start_index + i, axis) % (s + 1) for axis in (0, 1)]
                for i in range(b)
            ]
        )
        # place each shrunk image at its offset with one scatter of row/column indices
        rows = offsets[:, 0, None] + torch.arange(h - s)  # (B, h - s)
        cols = offsets[:, 1, None] + torch.arange(w - s)
        out = torch.full_like(x, float(self.config.fill))
        bi = torch.arange(b)[:, None, None]
        out.permute(0, 2, 3, 1)[
            bi, rows.to(x.device)[:, :, None], cols.to(x.device)[:, None, :]
        ] = small.permute(0, 2, 3, 1)
        return out.clamp_(0.0, 1.0)
