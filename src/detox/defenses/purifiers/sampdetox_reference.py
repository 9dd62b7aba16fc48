"""A slow, independent reference SampDetox, for tests only.

Written from the algorithm's specification (METHODS.md section 1 and the settings
documented in :mod:`detox.defenses.purifiers.sampdetox`), not from the vectorised code:
it calls none of ``sampdetox.py``'s functions or methods. One image at a time, in float64
Python arithmetic with explicit loops over pixels:

* the schedule: ``abar[k] = prod_{s < k} (1 - beta_s)`` from the diffusers scheduler's
  betas; the network is the model's UNet, called at (0-based) timestep ``level - 1``
  (a ``continuous_time`` model: the chain's betas are those of the settings' schedule,
  and the timestep is the fractional level of the model's schedule with the same
  ``abar``, interpolated linearly in ``log abar``, minus one);
* stage 1: noise the whole image to level ``t1`` (``+ noise_offset``), run the reverse
  chain to level 0, clip;
* the trigger map: per-pixel SSIM over an explicit 11 x 11 Gaussian window (sigma 1.5,
  reflect padding: index ``-1`` reads ``1``), ``c1 = (0.01 L)^2``, ``c2 = (0.03 L)^2``,
  population (co)variances; channels combined with ``luma_weights``; min-max normalised
  (a constant map gives 1);
* ``t2 = floor((1 - grey) * T2)``, rounded up to the level grid when ``stride > 1``;
* stage 2: re-noise every pixel to its own level, run the chain over ``T2 .. 1`` for the
  whole image and write a step's value only to pixels with ``t2 >= `` the step's level;
* the reverse step from level ``a`` to ``b``: ``x0 = (x - sqrt(1 - abar_a) eps) /
  sqrt(abar_a)`` (clipped when ``clip_denoised``), then the DDPM posterior mean
  ``sqrt(abar_b) beta / (1 - abar_a) x0 + sqrt(alpha) (1 - abar_b) / (1 - abar_a) x`` with
  ``alpha = abar_a / abar_b``, ``beta = 1 - alpha``, plus noise of variance
  ``beta (1 - abar_b) / (1 - abar_a)`` (``fixed_small``) or ``beta`` (``fixed_large``)
  when ``b > 0``; DDIM (eta 0): ``sqrt(abar_b) x0 + sqrt(1 - abar_b) eps``.

The noise is the purifier's documented per-image stream
(:class:`~detox.defenses.purifiers.base.NoiseStreams`: ``(seed, position)``), drawn in
the documented order (stage-1 noise, one draw per stage-1 step with ``b > 0``, the
stage-2 noise unless ``shared_noise``, one draw per stage-2 step with ``b > 0``), so the
reference and the purifier see the same random numbers. Never use it for real work.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from detox.defenses.purifiers.base import NoiseStreams


def _grid(top: int, stride: int) -> list[int]:
    """Levels top .. 0, about ``stride`` apart, evenly spaced: round(top k / n)."""
    if top <= 0:
        return [0]
    n = math.ceil(top / stride)
    levels: list[int] = []
    for k in range(n, -1, -1):
        v = int(round(top * k / n))
        if v not in levels:
            levels.append(v)
    return levels


def _gauss(size: int, sigma: float) -> list[float]:
    r = size // 2
    w = [math.exp(-((i - r) ** 2) / (2.0 * sigma * sigma)) for i in range(size)]
    s = sum(w)
    return [v / s for v in w]


def _reflect(i: int, n: int) -> int:
    while i < 0 or i >= n:
        i = -i if i < 0 else 2 * (n - 1) - i
    return i


def _ssim_pixel(a: np.ndarray, b: np.ndarray, i: int, j: int, g: list[float], L: float) -> float:
    """SSIM of two (H, W) arrays at pixel (i, j) over the Gaussian window ``g x g``."""
    h, w = a.shape
    r = len(g) // 2
    ma = mb = saa = sbb = sab = 0.0
    for di in range(-r, r + 1):
        ii = _reflect(i + di, h)
        for dj in range(-r, r + 1):
            jj = _reflect(j + dj, w)
            wt = g[di + r] * g[dj + r]
            va, vb = float(a[ii, jj]), float(b[ii, jj])
            ma += wt * va
            mb += wt * vb
            saa += wt * va * va
            sbb += wt * vb * vb
            sab += wt * va * vb
    va_, vb_, cov = saa - ma * ma, sbb - mb * mb, sab - ma * mb
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    return ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va_ + vb_ + c2))


def reference_grey(x: np.ndarray, xbar: np.ndarray, cfg: Any) -> np.ndarray:
    """The trigger map (H, W) of one image pair (C, H, W) in [0, 1], per pixel."""
    c, h, w = x.shape
    g = _gauss(cfg.ssim_window, cfg.ssim_sigma)
    wts = list(cfg.luma_weights) if len(cfg.luma_weights) == c else [1.0 / c] * c
    grey = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            grey[i, j] = sum(
                wts[k] * _ssim_pixel(x[k], xbar[k], i, j, g, cfg.ssim_data_range) for k in range(c)
            )
    lo, hi = grey.min(), grey.max()
    if hi - lo <= 1e-12:
        return np.ones((h, w))
    return (grey - lo) / (hi - lo)


def reference_purify(purifier: Any, x: torch.Tensor, seed: int = 0, start_index: int = 0):
    """Purify ``x`` (B, C, H, W in [0, 1]) image by image with per-pixel loops; returns a
    :class:`~detox.defenses.purifiers.sampdetox.SampDetoxOutput` (on the CPU)."""
    from detox.defenses.purifiers.sampdetox import SampDetoxOutput

    cfg = purifier.config
    model = purifier.model
    unet = model.unet

    def levels_of(betas_: Any) -> list[float]:
        out = [1.0]
        for beta in betas_:
            out.append(out[-1] * (1.0 - float(beta)))
        return out

    model_abar = levels_of(model.scheduler.betas)
    continuous = bool(model.meta.get("continuous_time")) and cfg.beta_schedule != "any"
    if continuous:  # the chain follows the settings' schedule (diffusers' betas for it)
        from detox.diffusion.backend import make_scheduler

        abar = levels_of(make_scheduler(cfg.beta_schedule, len(model_abar) - 1).betas)
    else:
        abar = model_abar
    # network timestep of a level: level - 1, or, for a continuous-time model, the
    # fractional level of the model's own schedule with the same abar (linear in log abar)
    neg_log_model = np.array([-math.log(a) for a in model_abar])

    def timestep(level: int) -> float:
        if not continuous:
            return float(level - 1)
        return float(
            np.interp(-math.log(abar[level]), neg_log_model, np.arange(len(model_abar))) - 1
        )

    off = int(cfg.noise_offset)
    dev = next(unet.parameters()).device
    _, c, h, w = x.shape

    def network(xt: np.ndarray, level: int) -> np.ndarray:
        inp = torch.from_numpy(xt).to(dev, torch.float32)[None]
        t = (
            torch.full((1,), timestep(level), dtype=torch.float32, device=dev)
            if continuous
            else torch.full((1,), level - 1, dtype=torch.long, device=dev)
        )
        with torch.inference_mode():
            return unet(inp, t).sample[0].double().cpu().numpy()

    def step_value(xv: float, ev: float, zv: float, a: int, b: int) -> float:
        ab_a, ab_b = abar[a], abar[b]
        x0 = (xv - math.sqrt(1.0 - ab_a) * ev) / math.sqrt(ab_a)
        if cfg.clip_denoised:
            x0 = min(1.0, max(-1.0, x0))
        if cfg.sampler == "ddim":
            return math.sqrt(ab_b) * x0 + math.sqrt(1.0 - ab_b) * ev
        alpha = ab_a / ab_b
        beta = 1.0 - alpha
        mean = (
            math.sqrt(ab_b) * beta / (1.0 - ab_a) * x0
            + math.sqrt(alpha) * (1.0 - ab_b) / (1.0 - ab_a) * xv
        )
        if b == 0:
            return mean
        var = beta * (1.0 - ab_b) / (1.0 - ab_a) if cfg.variance == "fixed_small" else beta
        return mean + math.sqrt(var) * zv

    def chain(xt: np.ndarray, grid: list[int], noise: NoiseStreams, levels=None) -> np.ndarray:
        for a, b in zip(grid[:-1], grid[1:]):
            eps = network(xt, a)
            drawn = b > 0 and cfg.sampler == "ddpm"  # DDIM steps draw nothing
            z = noise.randn()[0].double().cpu().numpy() if drawn else np.zeros_like(xt)
            new = xt.copy()
            for i in range(h):
                for j in range(w):
                    if levels is not None and levels[i, j] < a:
                        continue  # the chain has not reached this pixel's level yet
                    for k in range(c):
                        new[k, i, j] = step_value(xt[k, i, j], eps[k, i, j], z[k, i, j], a, b)
            xt = new
        return xt

    outs, stage1s, greys, t2s = [], [], [], []
    for n in range(len(x)):
        xi = x[n].double().cpu().numpy()
        noise = NoiseStreams(seed, [start_index + n], (c, h, w), purifier.device)
        x0 = 2.0 * xi - 1.0
        eps0 = noise.randn()[0].double().cpu().numpy()
        # stage 1: the whole image to level t1, then the chain down to 0
        if cfg.t1 > 0:
            lv = cfg.t1 + off
            xt = math.sqrt(abar[lv]) * x0 + math.sqrt(1.0 - abar[lv]) * eps0
            xbar = np.clip(chain(xt, _grid(cfg.t1, cfg.stride), noise), -1.0, 1.0)
        else:
            xbar = x0
        stage1 = (xbar + 1.0) / 2.0
        # trigger map and per-pixel levels
        grey = reference_grey(xi, stage1, cfg)
        grid = _grid(cfg.T2, cfg.stride)
        t2 = np.zeros((h, w), dtype=np.int64)
        for i in range(h):
            for j in range(w):
                lv2 = min(cfg.T2, max(0, math.floor((1.0 - grey[i, j]) * cfg.T2)))
                t2[i, j] = min(g for g in grid if g >= lv2)  # round up to the grid
        # stage 2: per-pixel re-noising, masked chain
        if cfg.T2 > 0:
            eps2 = eps0 if cfg.shared_noise else noise.randn()[0].double().cpu().numpy()
            xt = np.empty_like(xbar)
            for i in range(h):
                for j in range(w):
                    ab = abar[int(t2[i, j]) + off]
                    for k in range(c):
                        xt[k, i, j] = (
                            math.sqrt(ab) * xbar[k, i, j] + math.sqrt(1.0 - ab) * eps2[k, i, j]
                        )
            out = np.clip(chain(xt, grid, noise, levels=t2), -1.0, 1.0)
        else:
            out = xbar
        outs.append((out + 1.0) / 2.0)
        stage1s.append(stage1)
        greys.append(grey)
        t2s.append(t2)

    def stack(arrs: list[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.stack(arrs)).to(dtype)

    return SampDetoxOutput(
        stack(outs, torch.float32),
        stack(stage1s, torch.float32),
        stack(greys, torch.float32),
        stack(t2s, torch.int64),
    )
