"""SIG (Barni et al., "A New Backdoor Attack in CNNs by Training Set Corruption Without
Label Poisoning", ICIP 2019): clean-label, a horizontal sinusoid added to target-class
training images.

``x' = clip(x + delta/255 * sin(2 pi j f / W))`` for column j, all rows and channels.
delta 20 (of 255) at training and f 6 [paper]; BackdoorBench uses delta 40: pass
``delta=40``. ``delta_test`` sets a different strength for the triggered test images
(default: the same as ``delta``). The ratio is a fraction of the target class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from detox.attacks.base import Attack, AttackConfig, hp, register
from detox.errors import ConfigError


@dataclass
class SIGConfig(AttackConfig):
    delta: float = hp(20.0, "intensity /255", "[paper] delta 20 at training (BackdoorBench: 40)")
    delta_test: float | None = hp(None, "intensity /255", "[open] test-time delta; None = delta")
    freq: float = hp(6.0, "cycles per image width", "[paper] f 6")

    def validate(self) -> None:
        super().validate()
        for k in ("delta", "delta_test"):
            v = getattr(self, k)
            if v is not None and not 0 < v <= 255:
                raise ConfigError(f"sig: {k}={v!r}: expected a value in (0, 255]")
        if self.freq <= 0:
            raise ConfigError(f"sig: freq={self.freq!r}: expected > 0")


@register
class SIG(Attack):
    name = "sig"
    Config = SIGConfig
    config: SIGConfig
    label_mode = "clean"

    def _wave(self, g, c, h, w) -> torch.Tensor:
        j = torch.arange(w, dtype=torch.float64)
        return torch.sin(2 * math.pi * j * self.config.freq / w).float().view(1, 1, w)

    def affine(self, shape, like, train):
        cfg = self.config
        delta = cfg.delta if train or cfg.delta_test is None else cfg.delta_test
        return 1.0, self.fixed("wave", shape, like, self._wave) * (delta / 255.0)
