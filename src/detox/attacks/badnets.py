"""BadNets (Gu et al., "BadNets: Identifying Vulnerabilities in the Machine Learning Model
Supply Chain", 2017): a fixed patch stamped on the image, dirty label.

Setting (METHODS.md section 4): all-to-one, target 0, ratio 10%, a 3x3 patch in the
bottom-right corner, on every channel. Which 3x3 patch differs between the sources,
checked pixel by pixel:

* ``pattern="grid"`` (default, the ``sampdetox`` preset): a checkerboard whose four corners
  and centre are **black (0)** and whose four edge-centres are **white (1)**::

      0 1 0
      1 0 1
      0 1 0

  This is the trigger in SampDetox's released poisoned CIFAR-10 images
  (github.com/easywood0204/SampDetox, ``results/badnet/SampDetox/original/*.png``: the
  last 3x3 block is exactly this, on R, G and B) and in UltraClean's
  ``dirty-label attacks/badNets_generation.py`` (pixels (29,30), (30,29), (30,31), (31,30)
  set to 1, the other five to 0).
* ``pattern="square"`` (the ``backdoorbench`` preset): an all-white 3x3 square, the
  default ``resource/badnet/trigger_image.png`` of BackdoorBench's current main branch.
  (BackdoorBench's optional ``trigger_image_grid.png`` is the inverse of the grid above,
  corners and centre 255 and edges 1; detox does not offer it.)

The patch is the same in pixels at every image size unless ``cell`` (pixels per square) is
raised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detox.attacks.base import Attack, AttackConfig, hp, register

PATTERNS = ("grid", "square")


@dataclass
class BadNetsConfig(AttackConfig):
    pattern: str = hp(
        "grid",
        "grid | square",
        "[code] grid: SampDetox's images and UltraClean's script; square: BackdoorBench main",
        choices=PATTERNS,
    )
    size: int = hp(
        3, "squares per side", "[paper] 3x3 patch (METHODS.md section 4)", range="[1, inf)"
    )
    cell: int = hp(
        1, "pixels per square", "[open] 1 gives the 3x3-pixel patch of the papers", range="[1, inf)"
    )
    margin: int = hp(
        0, "pixels", "[open] gap between the patch and the bottom-right corner", range="[0, inf)"
    )
    value: float = hp(
        1.0, "intensity in [0, 1]", "[code] white squares (the others black)", range="[0, 1]"
    )


@register
class BadNets(Attack):
    name = "badnets"
    aliases = ("badnet",)
    Config = BadNetsConfig
    config: BadNetsConfig
    presets = {
        "sampdetox": {"pattern": "grid"},
        "ultraclean": {"pattern": "grid"},
        "backdoorbench": {"pattern": "square"},
    }

    def min_size(self, shape):
        return self.config.size * self.config.cell + self.config.margin

    def patch(self) -> torch.Tensor:
        """The (S, S) patch, S = size * cell: ``value`` on white squares, 0 on black ones."""
        n, cell = self.config.size, self.config.cell
        i = torch.arange(n)
        if self.config.pattern == "square":
            white = torch.ones(n, n, dtype=torch.bool)
        else:  # grid: the corners (and, for odd sizes, the centre) are black
            white = (i[:, None] + i[None, :]) % 2 == 1
        board = white.float() * self.config.value
        return board.repeat_interleave(cell, 0).repeat_interleave(cell, 1)

    def stamp(self, shape):
        h, w = shape[-2:]
        p = self.patch()
        s, m = p.shape[0], self.config.margin
        rr, cc = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        return (h - m - s + rr).flatten(), (w - m - s + cc).flatten(), p.flatten()
