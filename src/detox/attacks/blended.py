"""Blended (Chen et al., "Targeted Backdoor Attacks on Deep Learning Systems Using Data
Poisoning", 2017): blend a fixed image into the input, dirty label.

``x' = (1 - alpha) x + alpha P`` with alpha 0.2 (METHODS.md section 4). ``P`` is any image
file given by ``image`` (read with Pillow, converted to the images' channels and resized to
their size, bilinear) or, by default, a uniform-noise pattern fixed by the attack's seed
(the paper's other choice besides its cartoon image, which is not shipped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from detox.attacks.base import Attack, AttackConfig, hp, register
from detox.errors import ConfigError


@dataclass
class BlendedConfig(AttackConfig):
    alpha: float = hp(
        0.2, "fraction", "[paper] Chen et al. 2017; BackdoorBench alpha 0.2", range="(0, 1]"
    )
    image: str | None = hp(None, "path", "[open] image file to blend; None = seeded uniform noise")

    def validate(self) -> None:
        super().validate()
        if self.image is not None:
            read_image(self.image, 3, 8, 8)


def read_image(path: str, c: int, h: int, w: int, param: str = "image") -> torch.Tensor:
    """Image file -> float (c, h, w) in [0, 1]; ConfigError naming ``param`` if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if c == 3 else "L").resize((w, h), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ConfigError(
            f"blend image parameter {param!r}: cannot read {str(path)!r} as an image ({e})"
        ) from e
    t = torch.from_numpy(arr.copy()).float().div_(255.0)
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)


@register
class Blended(Attack):
    name = "blended"
    aliases = ("blend",)
    Config = BlendedConfig
    config: BlendedConfig

    def _pattern(self, g: torch.Generator, c: int, h: int, w: int) -> torch.Tensor:
        if self.config.image is not None:
            return read_image(self.config.image, c, h, w)
        return torch.rand(c, h, w, generator=g)

    def affine(self, shape, like, train):
        a = float(self.config.alpha)
        return 1.0 - a, self.fixed("pattern", shape, like, self._pattern) * a
