"""ZIP (Shi, Du, Wu, Guan, Sun, Liu, "Black-box Backdoor Defense via Zero-shot Image
Purification", NeurIPS 2023, arXiv 2303.12175): destroy the trigger with a linear
degradation, then let a diffusion model restore the image under the constraint that it
stays consistent with the degraded input (DDNM's range-null space decomposition).

For an input ``x`` (in [-1, 1]) and linear degradations ``A_k`` with pseudo-inverses
``A_k^+`` (``P_k = A_k^+ A_k`` projects on the range space):

* ``gray``: ``A`` = the mean of the three channels, ``A^+`` repeats it on every channel
  (the authors' ``color2gray`` / ``gray2color`` with coefficients 1/3);
* ``pool``: ``A`` = average pooling by ``pool`` (``AdaptiveAvgPool2d``), ``A^+`` = the
  nearest upsampling that repeats each mean (``MeanUpsample``).

Reverse chain over levels ``a -> b`` (``abar_a``, ``abar_b``; network noise estimate ``e``
at ``x_a``), as the authors' ``purify.py`` writes it:

1. ``xhat_k = x_a - P_k(x_a - sqrt(abar_a) x - sqrt(1 - abar_a) e)``: the range-space part
   of ``x_a`` replaced by the noised degraded observation, per degradation; ``xhat`` = their
   mean.
2. ``xhat = (1 - abar_a^lam) xhat + abar_a^lam x_a`` (``lam`` = ``guidance_power``, the
   code's ``at_threshold``): the guidance fades out as the chain approaches level 0.
3. ``x0 = (xhat - sqrt(1 - abar_a) e) / sqrt(abar_a)``; ``x_b = sqrt(abar_b) x0 +
   sqrt(1 - abar_b - s^2) e + s z`` with ``s = sqrt((1 - abar_b) / (1 - abar_a)) sqrt(1 -
   abar_a / abar_b)`` (DDIM with eta = 1), ``z`` seeded per image.

**Where detox departs, and why.** The authors start from pure noise at level 1000 and
take 20 steps of 50 levels with OpenAI's 256x256 ImageNet model (64 CIFAR-10 images
tiled into one 256x256 canvas). detox's own diffusion models are trained on linear levels
0 to 150 only (src/detox/weights/README.md), so the chain starts at ``t_start`` = 150 from
the *degraded* input noised to that level (``sqrt(abar) mean_k P_k(x) + sqrt(1 - abar)
z``: like pure noise, it carries nothing of the trigger's null-space part), on 32x32
images directly; ``stride`` sets the steps (``paper``: stride 8, 19 steps, close to the
code's 20). Everything else (the degradations, their average, ``guidance_power``, the
eta = 1 step, no clipping of the predicted ``x0``) is the code's. Defaults: the CIFAR-10
setting of the authors' README (``gray`` and ``pool`` with factor 4, ``--deg_scale 4``;
``degradations = "auto"`` uses ``pool`` alone for GTSRB and other datasets, as the README
does for GTSRB), ``guidance_power`` 10 (the code's default; its README's demo uses 1).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

import torch
import torch.nn.functional as F

from detox.config import hp
from detox.defenses.purifiers.base import PURIFIERS, NoiseStreams
from detox.defenses.purifiers.diffusion_chain import (
    DiffusionPurifier,
    DiffusionSettings,
    level_grid,
)
from detox.errors import ConfigError

DEGRADATIONS = ("auto", "gray", "pool", "gray,pool")


@dataclasses.dataclass
class ZIPConfig(DiffusionSettings):
    """ZIP settings. The shared diffusion settings:
    :class:`~detox.defenses.purifiers.diffusion_chain.DiffusionSettings`."""

    degradations: str = hp(
        "auto",
        "auto | gray | pool | gray,pool",
        "[code] CIFAR-10: gray,pool; GTSRB: pool",
        "the linear degradations (auto: gray,pool for CIFAR-10, pool otherwise)",
        choices=DEGRADATIONS,
    )
    pool: int = hp(4, "pixels", "[code] --deg_scale 4", "average-pooling factor", range="[2, inf)")
    guidance_power: float = hp(
        10.0,
        "exponent",
        "[code] --at_threshold (default 10; README demo 1)",
        "range-space guidance weight 1 - abar^power",
        range="(0, inf)",
    )
    t_start: int = hp(
        150,
        "levels",
        "[open] the shipped models' range; [code] 1000 from pure noise",
        "level the chain starts from",
        range="[1, inf)",
    )
    clip_denoised: bool = hp(False, "", "[code] off", "clip predicted x0 to [-1, 1] in each step")

    PRESETS: typing.ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"stride": 8},
        "quick": {"stride": 15},
        "smoke": {"stride": 50},
    }


def _gray(x: torch.Tensor) -> torch.Tensor:
    """``P = A^+ A`` of the channel mean: the mean on every channel."""
    return x.mean(1, keepdim=True).expand_as(x)


def _pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """``P = A^+ A`` of ``k x k`` average pooling: each block replaced by its mean."""
    return F.interpolate(F.avg_pool2d(x, k), scale_factor=k, mode="nearest")


@PURIFIERS.register("zip")
class ZIP(DiffusionPurifier):
    """ZIP with detox's diffusion model. See the module docstring."""

    name = "zip"
    Config = ZIPConfig

    def __init__(self, config: ZIPConfig | None = None, model: Any = None) -> None:
        super().__init__(config, model)
        self._dataset: str | None = None

    def _top_level(self) -> int:
        return self.config.t_start

    def use_dataset_defaults(self, dataset: str | None) -> ZIP:
        self._dataset = dataset
        return super().use_dataset_defaults(dataset)

    def resolved_degradations(self) -> tuple[str, ...]:
        d = self.config.degradations
        if d == "auto":
            from detox.data.registry import dataset_facts

            facts = dataset_facts(self._dataset)  # None for folders and unknown names
            name = facts.name if facts else None
            d = "gray,pool" if name == "cifar10" else "pool"
        return tuple(d.split(","))

    def _fingerprint_extra(self) -> bytes:
        return (
            super()._fingerprint_extra() + ("|" + ",".join(self.resolved_degradations())).encode()
        )

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["degradations"] = list(self.resolved_degradations())
        d["network_evaluations_per_image"] = (
            len(level_grid(self.config.t_start, self.config.stride)) - 1
        )
        return d

    def project(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``P_k x`` for every degradation ``k`` (range-space parts)."""
        cfg = self.config
        h, w = x.shape[-2:]
        out = []
        for name in self.resolved_degradations():
            if name == "gray":
                out.append(_gray(x))
            else:
                if h % cfg.pool or w % cfg.pool:
                    raise ConfigError(f"zip: pool={cfg.pool} must divide the image size {h}x{w}")
                out.append(_pool(x, cfg.pool))
        return out

    def _purify_batch(self, x: torch.Tensor, seed: int, start_index: int) -> torch.Tensor:
        cfg = self.config
        self._check_input(x)
        b, c, h, w = x.shape
        if "gray" in self.resolved_degradations() and c != 3:
            raise ConfigError(f"zip: the gray degradation needs 3 channels, images have {c}")
        noise = NoiseStreams(seed, range(start_index, start_index + b), (c, h, w), x.device)
        with torch.inference_mode():
            y = x * 2.0 - 1.0
            projected = self.project(y)
            start = torch.stack(projected).mean(0)
            grid = level_grid(cfg.t_start, cfg.stride)
            xt = self._noise_to(start, grid[0] + cfg.noise_offset, noise.randn())
            for a, bb in zip(grid[:-1], grid[1:]):
                ab_a, ab_b = float(self._abar[a]), float(self._abar[bb])
                e = self._eps(xt, a)
                resid = xt - math.sqrt(ab_a) * y - math.sqrt(1.0 - ab_a) * e
                xhat = torch.stack([xt - p for p in self.project(resid)]).mean(0)
                g = ab_a**cfg.guidance_power
                xhat = (1.0 - g) * xhat + g * xt
                x0 = (xhat - math.sqrt(1.0 - ab_a) * e) / math.sqrt(ab_a)
                if cfg.clip_denoised:
                    x0 = x0.clamp(-1.0, 1.0)
                s = math.sqrt((1.0 - ab_b) / (1.0 - ab_a) * (1.0 - ab_a / ab_b))
                xt = math.sqrt(ab_b) * x0 + math.sqrt(max(1.0 - ab_b - s * s, 0.0)) * e
                if bb > 0:
                    xt = xt + s * noise.randn()
            return ((xt.clamp(-1.0, 1.0) + 1.0) / 2.0).to(x.dtype)
