"""BaDLoss "Blend-Pattern" (Alex et al., ICLR 2025; authors' ``fixed`` attack): blend a
grid of dots, dirty label.

``P = 1`` on every other row and column (``P[::2, ::2] = 1``, else 0), all channels;
``x' = (1 - a) x + a P``, a = 0.025, 0.15 on large images (METHODS.md section 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detox.attacks.base import Attack, AttackConfig, hp, register


@dataclass
class BlendPatternConfig(AttackConfig):
    alpha: float = hp(0.025, "fraction", "[code] FIXED_BACKDOOR_ALPHA 0.025", range="(0, 1]")
    alpha_large: float | None = hp(
        0.15, "fraction", "[METHODS] 0.15 on large images", range="(0, 1]"
    )


def _dots(g, c: int, h: int, w: int) -> torch.Tensor:
    p = torch.zeros(1, h, w)
    p[:, ::2, ::2] = 1.0
    return p


@register
class BlendPattern(Attack):
    name = "blend-pattern"
    aliases = ("blend_pattern", "blend-p", "fixed")
    Config = BlendPatternConfig
    config: BlendPatternConfig

    def affine(self, shape, like, train):
        a = float(self.param("alpha", shape))
        return 1.0 - a, self.fixed("pattern", shape, like, _dots) * a
