"""BadNets (Gu et al., "BadNets: Identifying Vulnerabilities in the Machine Learning Model
Supply Chain", 2017): a fixed patch stamped on the image, dirty label.

Setting (METHODS.md section 4, BackdoorBench-style): a 3x3 black-and-white checkerboard in
the bottom-right corner (white at the patch corners and centre), all channels, all-to-one
target 0, ratio 10%. The patch is the same in pixels at every image size unless ``cell``
(pixels per checkerboard square) is raised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detox.attacks.base import Attack, AttackConfig, hp, register
from detox.errors import ConfigError


@dataclass
class BadNetsConfig(AttackConfig):
    size: int = hp(3, "squares per side", "[paper] 3x3 checkerboard (METHODS.md section 4)")
    cell: int = hp(1, "pixels per square", "[open] 1 gives the 3x3-pixel patch of the papers")
    margin: int = hp(0, "pixels", "[open] gap between the patch and the bottom-right corner")
    value: float = hp(1.0, "intensity in [0, 1]", "[paper] white squares (the others black)")

    def validate(self) -> None:
        super().validate()
        if self.size < 1 or self.cell < 1 or self.margin < 0:
            raise ConfigError("badnets: size and cell must be >= 1 and margin >= 0")
        self._check_range("value", 0.0, 1.0)


@register
class BadNets(Attack):
    name = "badnets"
    aliases = ("badnet",)
    Config = BadNetsConfig
    config: BadNetsConfig

    def min_size(self, shape):
        return self.config.size * self.config.cell + self.config.margin

    def patch(self) -> torch.Tensor:
        """The (S, S) checkerboard, S = size * cell."""
        n, cell = self.config.size, self.config.cell
        i = torch.arange(n)
        board = ((i[:, None] + i[None, :]) % 2 == 0).float() * self.config.value
        return board.repeat_interleave(cell, 0).repeat_interleave(cell, 1)

    def stamp(self, shape):
        h, w = shape[-2:]
        p = self.patch()
        s, m = p.shape[0], self.config.margin
        rr, cc = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        return (h - m - s + rr).flatten(), (w - m - s + cc).flatten(), p.flatten()
