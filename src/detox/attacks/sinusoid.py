"""BaDLoss "Sinusoid" (Alex et al., ICLR 2025; authors' ``sinusoid`` attack, after SIG):
blend a vertical-stripe cosine pattern into target-class images, clean label.

``P[:, col] = 1 - cos(2 pi col f / W)`` (values in [0, 2]), f = 6, all channels;
``x' = clip((1 - a) x + a P)``, a = 0.075, 0.15 on large images (METHODS.md section 3).
The ratio is a fraction of the target class (BaDLoss GTSRB: at least 300 images, set by the
``badloss-gtsrb`` suite through ``min_count``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from detox.attacks.base import Attack, AttackConfig, hp, register


@dataclass
class SinusoidConfig(AttackConfig):
    alpha: float = hp(0.075, "fraction", "[code] SINUSOID_BACKDOOR_ALPHA 0.075", range="(0, 1]")
    alpha_large: float | None = hp(
        0.15, "fraction", "[METHODS] 0.15 on large images", range="(0, 1]"
    )
    freq: float = hp(
        6.0, "cycles per image width", "[code] SINUSOID_BACKDOOR_FREQ 6", range="(0, inf)"
    )


@register
class Sinusoid(Attack):
    name = "sinusoid"
    Config = SinusoidConfig
    config: SinusoidConfig
    label_mode = "clean"

    def _pattern(self, g, c: int, h: int, w: int) -> torch.Tensor:
        col = torch.arange(w, dtype=torch.float64)
        return (1 - torch.cos(2 * math.pi * col * self.config.freq / w)).float().view(1, 1, w)

    def affine(self, shape, like, train):
        a = float(self.param("alpha", shape))
        return 1.0 - a, self.fixed("pattern", shape, like, self._pattern) * a
