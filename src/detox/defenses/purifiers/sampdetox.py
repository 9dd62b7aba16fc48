"""SampDetox (NeurIPS 2024): black-box test-time purification with a diffusion model.

For inputs ``x`` in [0, 1] (the diffusion model works on ``x0 = 2x - 1``):

1. **Stage 1, global.** Noise the whole image to level ``t1``
   (``x = sqrt(abar) x0 + sqrt(1 - abar) eps``) and run the ancestral DDPM reverse chain
   down to level 0: the restored image ``xbar``. Light noise destroys low-visibility
   triggers.
2. **Trigger map.** Per-pixel SSIM between ``x`` and ``xbar`` (Gaussian window 11,
   sigma 1.5; :func:`ssim_map`, kornia's formula, here in float64 and without kornia's
   ``eps``, which equals scikit-image's map away from the border), combined over channels
   with luma weights, min-max normalised per image: ``grey`` (low = changed a lot =
   likely a high-visibility trigger).
3. **Per-pixel level.** ``t2(i, j) = floor((1 - grey(i, j)) * T2)``.
4. **Stage 2, local.** Re-noise ``xbar`` per pixel to its own level ``t2(i, j)``, then run
   the reverse chain over levels ``T2 .. 1`` for the whole image, writing each step's
   result only where ``t2(i, j) >=`` the step's level (``torch.where``): a pixel joins the
   chain when the chain reaches its noise level; pixels with ``t2 = 0`` never change.
5. Clip to [-1, 1] and map back to [0, 1].

**Levels and timesteps.** Level ``k`` means ``k`` forward diffusion steps:
``abar_levels[k] = prod_{s < k} (1 - beta_s)`` (level 0 = clean). The reverse step from
level ``k`` evaluates the UNet at (0-based) timestep ``k - 1`` — the spec's "chain for
t = T2-1 .. 0, update where t2 > t". Stage 1 costs ``t1`` network evaluations, stage 2
``T2`` (140 for ``paper``, 240 for ``code``). The authors' code noises one level further
than it denoises (``abar[t]`` then steps ``t-1 .. 0``), which also leaves noise of std
~0.01 on ``t2 = 0`` pixels; ``noise_offset = 1`` (preset ``code``) reproduces that.

**Presets** ([paper] the paper, [code] the authors' code, [open] chosen here):

* ``paper`` (default): cosine schedule, ``t1 = 20``, ``T2 = 120``, luma weights
  (0.299, 0.587, 0.114), SSIM data range 1; reverse step with the DDPM posterior
  variance and clipping of the predicted x0 (diffusers' DDPM defaults) [open].
* ``code``: linear schedule, ``t1 = T2 = 120``, the authors' SSIM quirks (weights 0.11 /
  0.59 / 0.30 on R/G/B and ``data_range = 255`` on [0, 1] images, which turns the map
  into a blurred local-mean-difference map), variance ``beta_t`` ("fixed_large"), no x0
  clipping, ``noise_offset = 1``. ``shared_noise = True`` adds the authors' one-noise-
  tensor quirk (off by default: fresh seeded noise per image and stage).
* ``quick``: ``paper`` with ``stride = 5`` (28 network evaluations instead of 140);
  ``smoke``: ``paper`` with ``stride = 20`` (7 evaluations), for tests.

**Schedule.** The same ``t1`` means different noise under the two schedules (at level
120: noise std 0.38 linear vs 0.20 cosine), so each preset names its schedule
(``beta_schedule``). A *continuous-time* model (trained on fractional levels, see
:mod:`detox.diffusion.presets`; the models detox ships are) runs the chains on that
schedule: level ``k`` of the preset's schedule is fed to the network as the fractional
timestep of the model's own schedule with the same ``abar``
(:meth:`~detox.diffusion.DiffusionModel.timesteps_for`), and settings noisier than its
trained range are refused. Any other model only makes sense with the schedule it was
trained with, so the chains use its own betas; a model with another schedule than the
preset's is still used, with a warning recorded in ``purifier.warnings``
(``beta_schedule = "any"`` turns the check off, and always uses the model's schedule). A
model trained on timesteps ``[0, t_max)`` only is refused for ``max(t1, T2) > t_max``.

**On a GPU**: ``amp = True`` (bf16 autocast) and ``compile = True`` (``torch.compile`` of the
UNet, about 20 s once), with batches of 1,024 images: 346 images per second with the
faithful ``paper`` chain on an H200, 1,544 times the authors' structure (batch 1, per-pixel
loops); docs/results.md, "SampDetox on a GPU".

**Stride** (beyond the paper): ``stride > 1`` walks both chains over an evenly spaced grid
of about ``top / stride`` levels, with respaced DDPM steps (``sampler = "ddpm"``,
ancestral) or deterministic DDIM steps (``sampler = "ddim"``, eta = 0); per-pixel levels
are rounded *up* to the grid, so every pixel with ``t2 > 0`` is still noised. ``stride = 1``
with ``ddpm`` is the faithful method.
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
    VARIANCES,
    DiffusionPurifier,
    DiffusionSettings,
    level_grid,
)
from detox.errors import ConfigError


@dataclasses.dataclass
class SampDetoxConfig(DiffusionSettings):
    """SampDetox settings. Noise levels are in diffusion steps (of T = 1000). The shared
    diffusion settings (model, sampler, stride, amp, compile, batching, seed):
    :class:`~detox.defenses.purifiers.diffusion_chain.DiffusionSettings`; redeclared here
    where SampDetox's sources set them."""

    t1: int = hp(20, "steps", "[paper]; [code] 120", "stage-1 noise level", range="[0, inf)")
    T2: int = hp(120, "steps", "[paper, code]", "maximum stage-2 noise level", range="[0, inf)")
    beta_schedule: str = hp(
        "cosine",
        "schedule name | any",
        "[paper]; [code] linear",
        "the schedule the preset expects; any = the model's own",
    )
    luma_weights: tuple[float, ...] = hp(
        (0.299, 0.587, 0.114),
        "weights (R, G, B)",
        "[paper]; [code] .11/.59/.30",
        "SSIM channels combined into one map",
        range="[0, 1]",
    )
    ssim_data_range: float = hp(
        1.0,
        "intensity",
        "[paper]; [code] 255 on [0,1] images",
        "SSIM dynamic range L",
        range="(0, inf)",
    )
    ssim_window: int = hp(
        11, "pixels, odd", "[paper, code]", "SSIM Gaussian window", range="[3, inf)"
    )
    ssim_sigma: float = hp(1.5, "pixels", "[paper, code]", "SSIM Gaussian sigma", range="(0, inf)")
    variance: str = hp(
        "fixed_small",
        "fixed_small | fixed_large",
        "[open] posterior; [code] fixed_large",
        "reverse-step variance",
        choices=VARIANCES,
    )
    clip_denoised: bool = hp(
        True, "", "[open]; [code] off", "clip predicted x0 to [-1, 1] in each step"
    )
    noise_offset: int = hp(
        0, "levels", "[open]; [code] 1", "extra forward levels when noising", choices=(0, 1)
    )
    shared_noise: bool = hp(False, "", "[code quirk]", "stage 2 re-noises with stage 1's noise")

    PRESETS: typing.ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {},
        "code": {
            "t1": 120,
            "T2": 120,
            "beta_schedule": "linear",
            "luma_weights": (0.11, 0.59, 0.30),
            "ssim_data_range": 255.0,
            "variance": "fixed_large",
            "clip_denoised": False,
            "noise_offset": 1,
        },
        "quick": {"stride": 5},
        "smoke": {"stride": 20},
    }

    def validate(self) -> None:
        """What no declared range says (each field's range and choices: ``hp``)."""
        super().validate()
        if self.ssim_window % 2 == 0:
            raise ConfigError(f"ssim_window={self.ssim_window}: expected an odd size >= 3")


# ---------------------------------------------------------------------------------------
# SSIM map and trigger localisation


def gaussian_kernel1d(size: int, sigma: float, device=None, dtype=torch.float32) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - size // 2
    k = torch.exp(-(x**2) / (2.0 * sigma**2))
    return k / k.sum()


def ssim_map(
    x: torch.Tensor,
    y: torch.Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
    eps: float = 1e-12,
) -> torch.Tensor:
    """Per-pixel SSIM map (B, C, H, W) of two image batches.

    Separable Gaussian window with reflect padding and the formula of
    ``kornia.metrics.ssim(x, y, window_size, max_val=data_range)`` (which fixes sigma at
    1.5): ``c1 = (0.01 L)^2``, ``c2 = (0.03 L)^2``, ``eps`` added to the denominator.
    (scikit-image, used by the authors, differs slightly: symmetric padding and the sample
    covariance factor N/(N-1).)
    """
    b, c, h, w = x.shape
    r = window_size // 2
    k = gaussian_kernel1d(window_size, sigma, x.device, x.dtype)
    kx = k.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    ky = k.view(1, 1, -1, 1).expand(c, 1, -1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = F.conv2d(F.pad(t, [r, r, 0, 0], mode="reflect"), kx, groups=c)
        return F.conv2d(F.pad(t, [0, 0, r, r], mode="reflect"), ky, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu1, mu2 = blur(x), blur(y)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = blur(x * x) - mu1_sq
    s2 = blur(y * y) - mu2_sq
    s12 = blur(x * y) - mu12
    num = (2.0 * mu12 + c1) * (2.0 * s12 + c2)
    den = (mu1_sq + mu2_sq + c1) * (s1 + s2 + c2)
    return num / (den + eps)


def trigger_map(
    x: torch.Tensor,
    xbar: torch.Tensor,
    cfg: SampDetoxConfig,
) -> torch.Tensor:
    """The grey map (B, H, W) in [0, 1], float64: SSIM(x, xbar) combined over channels
    with ``cfg.luma_weights``, min-max normalised per image. Low = likely trigger.

    An image whose map is constant (nothing stands out) gets ``grey = 1`` everywhere,
    i.e. ``t2 = 0``: stage 2 leaves it as it is.

    Computed in float64 (on the CPU for MPS inputs, which have no float64): in float32 the
    variances ``E[x^2] - E[x]^2`` carry errors of ~1e-7, i.e. ~1e-4 of SSIM against
    ``c2 = (0.03 L)^2 = 9e-4``, which moved ``t2`` by one level on 0.5-0.9% of the pixels
    of real CIFAR-10 images. Without kornia's ``eps`` (as scikit-image, the authors'
    tool): ``c1 c2 > 0`` already bounds the denominator, and the ``eps`` made the map of
    two identical images non-constant (``1 - 1e-12 / den``), which min-max normalisation
    turned into a full-range map.
    """
    work = torch.device("cpu") if x.device.type == "mps" else x.device
    x64, xbar64 = x.to(work, torch.float64), xbar.to(work, torch.float64)
    s = ssim_map(x64, xbar64, cfg.ssim_window, cfg.ssim_sigma, cfg.ssim_data_range, eps=0.0)
    wts = tuple(cfg.luma_weights)
    if s.shape[1] == len(wts):
        w = torch.tensor(wts, device=s.device, dtype=s.dtype).view(1, -1, 1, 1)
        grey = (s * w).sum(1)
    else:  # grayscale (or other channel counts): plain mean
        grey = s.mean(1)
    lo = grey.amin(dim=(1, 2), keepdim=True)
    hi = grey.amax(dim=(1, 2), keepdim=True)
    span = hi - lo
    flat = span <= 1e-12
    out = (grey - lo) / torch.where(flat, torch.ones_like(span), span)
    return torch.where(flat, torch.ones_like(out), out).to(x.device)


def level_map(grey: torch.Tensor, T2: int) -> torch.Tensor:
    """``t2 = floor((1 - grey) * T2)`` as int64, in [0, T2]."""
    return ((1.0 - grey) * T2).floor().clamp_(0, T2).to(torch.int64)


def snap_up(levels: torch.Tensor, grid: list[int]) -> torch.Tensor:
    """Round every level up to the nearest level of ``grid`` (identity for stride 1)."""
    g = torch.tensor(sorted(grid), device=levels.device, dtype=levels.dtype)
    return g[torch.searchsorted(g, levels.contiguous()).clamp_(max=len(g) - 1)]


# ---------------------------------------------------------------------------------------
# the purifier


@dataclasses.dataclass
class SampDetoxOutput:
    """``x``: purified images [0, 1]; ``stage1``: stage-1 output ``xbar`` [0, 1];
    ``grey``: trigger map (B, H, W) in [0, 1] (low = trigger); ``t2``: per-pixel stage-2
    noise levels (B, H, W) actually used (int64; rounded up to the grid when stride > 1)."""

    x: torch.Tensor
    stage1: torch.Tensor
    grey: torch.Tensor
    t2: torch.Tensor


@PURIFIERS.register("sampdetox")
class SampDetox(DiffusionPurifier):
    """SampDetox with a diffusers diffusion model. See the module docstring."""

    name = "sampdetox"
    Config = SampDetoxConfig
    Output = SampDetoxOutput

    def _top_level(self) -> int:
        return max(self.config.t1, self.config.T2)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        cfg = self.config
        d["network_evaluations_per_image"] = (len(level_grid(cfg.t1, cfg.stride)) - 1) + (
            len(level_grid(cfg.T2, cfg.stride)) - 1
        )
        return d

    # -- chains ----------------------------------------------------------------------------
    def _stage1(self, x0: torch.Tensor, noise: NoiseStreams) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (xbar in [-1, 1], the initial noise)."""
        cfg = self.config
        eps0 = noise.randn()
        if cfg.t1 == 0:
            return x0, eps0
        ab = float(self._abar[cfg.t1 + cfg.noise_offset])
        x = math.sqrt(ab) * x0 + math.sqrt(1.0 - ab) * eps0
        grid = level_grid(cfg.t1, cfg.stride)
        for a, b in zip(grid[:-1], grid[1:]):
            x = self._step(x, a, b, noise)
        return x.clamp(-1.0, 1.0), eps0

    def _renoise(self, xbar: torch.Tensor, t2: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Per-pixel forward noising of ``xbar`` to levels ``t2`` (B, H, W)."""
        ab = self._abar.to(xbar.device, torch.float32)[t2 + self.config.noise_offset]
        ab = ab.unsqueeze(1)  # B,1,H,W
        return ab.sqrt() * xbar + (1.0 - ab).sqrt() * eps

    def _run(self, x: torch.Tensor, seed: int, start_index: int) -> SampDetoxOutput:
        cfg = self.config
        self._check_input(x)
        b, c, h, w = x.shape
        noise = NoiseStreams(seed, range(start_index, start_index + b), (c, h, w), x.device)
        with torch.inference_mode():
            x0 = x * 2.0 - 1.0
            xbar, eps0 = self._stage1(x0, noise)
            stage1 = (xbar + 1.0) / 2.0
            grey = trigger_map(x, stage1, cfg)  # float64
            grid = level_grid(cfg.T2, cfg.stride)
            t2 = snap_up(level_map(grey, cfg.T2), grid)
            grey = grey.to(x.dtype)
            if cfg.T2 > 0:
                eps2 = eps0 if cfg.shared_noise else noise.randn()
                xt = self._renoise(xbar, t2, eps2)
                lv = t2.unsqueeze(1)
                for a, bb in zip(grid[:-1], grid[1:]):
                    xt = self._step(xt, a, bb, noise, active=lv >= a)
                out = xt.clamp(-1.0, 1.0)
            else:
                out = xbar
            return SampDetoxOutput((out + 1.0) / 2.0, stage1, grey, t2)
