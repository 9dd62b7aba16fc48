"""SIG (Barni et al., "A New Backdoor Attack in CNNs by Training Set Corruption Without
Label Poisoning", ICIP 2019): clean-label, a horizontal sinusoid added to target-class
training images.

``x' = clip(x + delta/255 * sin(2 pi j f / W))`` for column j, all rows and channels.
Presets (values checked against each source):

* ``backdoorbench`` (the defaults; SampDetox's setting, BackdoorBench
  ``config/attack/sig/default.yaml`` and ``utils/bd_img_transform/sig.py``): delta 40,
  f 6, the same delta at test time; ``ratio`` 0.1 read as BackdoorBench reads it, a
  fraction of the **whole training set** drawn from the target class
  (``ratio_of="train"``: on CIFAR-10 at 10% that is all 5,000 target-class images).
  BackdoorBench truncates to uint8 after the addition; detox rounds (at most 1/255 apart).
* ``ultraclean`` (UltraClean's clean-label experiments, METHODS.md section 2 and the
  paper's delta 20 of Barni et al.): delta 20, f 6, ``ratio`` 0.3 of the target class
  (``ratio_of="target_class"``).

``delta_test`` sets a different strength for the triggered test images (default: the
same as ``delta``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from detox.attacks.base import RATIO_OF, Attack, AttackConfig, hp, register


@dataclass
class SIGConfig(AttackConfig):
    ratio_of: str | None = hp(
        "train",
        "train | target_class",
        "[BackdoorBench] pratio x the whole training set, drawn from the target class",
        choices=RATIO_OF,
    )
    delta: float = hp(
        40.0, "intensity /255", "[BackdoorBench] sig_delta 40 (paper: 20)", range="(0, 255]"
    )
    delta_test: float | None = hp(
        None, "intensity /255", "[open] test-time delta; None = delta", range="(0, 255]"
    )
    freq: float = hp(
        6.0, "cycles per image width", "[paper] f 6 (BackdoorBench sig_f 6)", range="(0, inf)"
    )


@register
class SIG(Attack):
    name = "sig"
    Config = SIGConfig
    config: SIGConfig
    label_mode = "clean"
    presets = {
        "backdoorbench": {},
        "ultraclean": {"delta": 20.0, "ratio": 0.3, "ratio_of": "target_class"},
    }

    def _wave(self, g, c, h, w) -> torch.Tensor:
        j = torch.arange(w, dtype=torch.float64)
        return torch.sin(2 * math.pi * j * self.config.freq / w).float().view(1, 1, w)

    def affine(self, shape, like, train):
        cfg = self.config
        delta = cfg.delta if train or cfg.delta_test is None else cfg.delta_test
        return 1.0, self.fixed("wave", shape, like, self._wave) * (delta / 255.0)
