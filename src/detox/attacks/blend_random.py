"""BaDLoss "Blend-Random" (Alex et al., ICLR 2025; authors' ``random`` attack): blend a
uniform-noise pattern fixed by the seed, dirty label.

``x' = (1 - a) x + a P`` with ``P`` uniform per pixel and channel, quantised to 8 bits (the
code saves it as a PNG), a = 0.075, 0.15 on large images (METHODS.md section 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detox.attacks.base import Attack, AttackConfig, hp, register


@dataclass
class BlendRandomConfig(AttackConfig):
    alpha: float = hp(0.075, "fraction", "[code] RANDOM_BACKDOOR_ALPHA 0.075", range="(0, 1]")
    alpha_large: float | None = hp(
        0.15, "fraction", "[METHODS] 0.15 on large images", range="(0, 1]"
    )


@register
class BlendRandom(Attack):
    name = "blend-random"
    aliases = ("blend_random", "blend-r", "random")
    Config = BlendRandomConfig
    config: BlendRandomConfig

    def _pattern(self, g: torch.Generator, c: int, h: int, w: int) -> torch.Tensor:
        return torch.randint(0, 256, (c, h, w), generator=g).float() / 255.0

    def affine(self, shape, like, train):
        a = float(self.param("alpha", shape))
        return 1.0 - a, self.fixed("pattern", shape, like, self._pattern) * a
