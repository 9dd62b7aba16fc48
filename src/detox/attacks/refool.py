"""Refool (Liu et al., "Reflection Backdoor: A Natural Backdoor Attack on Deep Neural
Networks", ECCV 2020): reflections of other images as the trigger, clean label.

Simplification (documented, [open]): Refool draws reflection images from an outside set
(PascalVOC), models three reflection types (focal blur, ghost effect, total reflection) and
selects the most effective reflections with a model in the loop. Here:

* the reflection pool is ``pool_size`` training images that are *not* of the target class,
  drawn with the attack's seed when :func:`~detox.attacks.poison` calls :meth:`Refool.prepare`;
* each pool image is blurred once (Gaussian, sigma drawn from ``[sigma_min, sigma_max]``
  pixels, the "focal blur" type);
* each poisoned image gets a seeded random pool image and weight ``a`` drawn from
  ``[alpha_min, alpha_max]``: ``x' = (1 - a) x + a blur(R)``.

Without :meth:`prepare` (a bare ``apply``), the other images of the batch serve as the
pool (a seeded derangement, blurred with the mean sigma). Default label mode: clean (the
paper poisons target-class images); the ratio is a fraction of the target class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from detox.attacks.base import Attack, AttackConfig, hp, register
from detox.attacks.ops import derangement, gaussian_blur
from detox.errors import ConfigError


@dataclass
class RefoolConfig(AttackConfig):
    pool_size: int = hp(
        200, "images", "[open] reflection images from the training set", range="[1, inf)"
    )
    alpha_min: float = hp(0.2, "fraction", "[open] reflection weight, lower bound", range="[0, 1]")
    alpha_max: float = hp(0.4, "fraction", "[open] reflection weight, upper bound", range="[0, 1]")
    sigma_min: float = hp(
        1.0, "pixels", "[open] focal-blur sigma, lower bound (paper: 1..5)", range="[0, inf)"
    )
    sigma_max: float = hp(3.0, "pixels", "[open] focal-blur sigma, upper bound", range="[0, inf)")

    def validate(self) -> None:
        super().validate()
        if self.alpha_min > self.alpha_max:
            raise ConfigError(
                f"refool: alpha_min={self.alpha_min!r} > alpha_max={self.alpha_max!r}: "
                "expected alpha_min <= alpha_max"
            )
        if self.sigma_min > self.sigma_max:
            raise ConfigError(
                f"refool: sigma_min={self.sigma_min!r} > sigma_max={self.sigma_max!r}: "
                "expected sigma_min <= sigma_max"
            )


@register
class Refool(Attack):
    name = "refool"
    Config = RefoolConfig
    config: RefoolConfig
    label_mode = "clean"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool: torch.Tensor | None = None  # uint8 (P, C, H, W), blurred
        self.pool_index: torch.Tensor | None = None

    def prepare(self, train: Any, ctx: Any = None) -> None:
        """Pick and blur the reflection pool from the clean training set (seeded)."""
        from detox.data.base import to_float, to_uint8

        cfg = self.config
        cand = self.target_map.eligible(train.y).nonzero().flatten()
        if len(cand) == 0:
            cand = torch.arange(len(train))
        g = self.generator("pool")
        idx = cand[torch.randperm(len(cand), generator=g)[: cfg.pool_size]].sort().values
        sigmas = cfg.sigma_min + (cfg.sigma_max - cfg.sigma_min) * torch.rand(len(idx), generator=g)
        blurred = gaussian_blur(to_float(train.x[idx]), sigmas)
        self.pool, self.pool_index = to_uint8(blurred), idx
        self._cache.clear()

    def _weights(self, b: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        a = self.config.alpha_min + (self.config.alpha_max - self.config.alpha_min) * torch.rand(
            b, generator=generator
        )
        return a.view(b, 1, 1, 1).to(like.device, like.dtype)

    def _trigger(self, x, *, train, generator):
        b = x.shape[0]
        if self.pool is not None:
            if tuple(self.pool.shape[1:]) != tuple(x.shape[1:]):
                raise ConfigError(
                    f"refool: reflection pool images are {tuple(self.pool.shape[1:])}, "
                    f"inputs are {tuple(x.shape[1:])}"
                )
            pool = self.fixed(
                "pool", tuple(x.shape[1:]), x, lambda g, c, h, w: self.pool.float() / 255
            )
            refl = pool[torch.randint(len(pool), (b,), generator=generator).to(x.device)]
        elif b >= 2:
            sigma = (self.config.sigma_min + self.config.sigma_max) / 2
            refl = gaussian_blur(x[derangement(b, generator).to(x.device)], sigma)
        else:
            raise ConfigError(
                "refool: needs a reflection pool (call prepare(train_set)) or a batch of >= 2 images"
            )
        return torch.lerp(x, refl, self._weights(b, generator, x))
