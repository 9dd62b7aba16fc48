"""A slow reference SampDetox with the authors' structure, for tests and benchmarks only.

One image at a time (batch size 1); stage 2 re-noises and updates pixel by pixel in
Python loops over (i, j, channel), as in the authors' ``SampDetox.py`` and
``GaussianDiffusionSampler.forward``. It shares the reverse-step arithmetic and the noise
streams of :class:`~detox.defenses.purifiers.sampdetox.SampDetox`, so on the same input,
seed and positions both give the same images (up to floating-point rounding): that is
what the test of the vectorised masked chain checks. Never use it for real work.
"""

from __future__ import annotations

import math

import torch

from detox.defenses.purifiers.base import NoiseStreams
from detox.defenses.purifiers.sampdetox import (
    SampDetox,
    SampDetoxOutput,
    level_grid,
    level_map,
    snap_up,
    trigger_map,
)


def reference_purify(
    purifier: SampDetox, x: torch.Tensor, seed: int = 0, start_index: int = 0
) -> SampDetoxOutput:
    """Purify ``x`` (B, C, H, W in [0, 1]) image by image with per-pixel Python loops."""
    cfg = purifier.config
    model = purifier.model
    abar = model.abar_levels
    outs, stage1s, greys, t2s = [], [], [], []
    _, c, h, w = x.shape
    with torch.inference_mode():
        for n in range(len(x)):
            xi = x[n : n + 1].to(purifier.device, torch.float32)
            noise = NoiseStreams(seed, [start_index + n], (c, h, w), xi.device)
            # stage 1: whole image, as in the authors' code
            xbar, eps0 = purifier._stage1(xi * 2.0 - 1.0, noise)
            stage1 = (xbar + 1.0) / 2.0
            grey = trigger_map(xi, stage1, cfg)
            grid = level_grid(cfg.T2, cfg.stride)
            t2 = snap_up(level_map(grey, cfg.T2), grid)
            if cfg.T2 > 0:
                eps2 = eps0 if cfg.shared_noise else noise.randn()
                # per-pixel re-noising
                xt = xbar.clone()
                for i in range(h):
                    for j in range(w):
                        lv = int(t2[0, i, j]) + cfg.noise_offset
                        a = math.sqrt(float(abar[lv]))
                        s = math.sqrt(1.0 - float(abar[lv]))
                        for k in range(c):
                            xt[0, k, i, j] = xbar[0, k, i, j] * a + eps2[0, k, i, j] * s
                # masked chain: a pixel takes the step's value once the chain reaches its level
                for lvl, nxt in zip(grid[:-1], grid[1:]):
                    new = purifier._step(xt, lvl, nxt, noise)
                    for i in range(h):
                        for j in range(w):
                            if t2[0, i, j] >= lvl:
                                for k in range(c):
                                    xt[0, k, i, j] = new[0, k, i, j]
                out = xt.clamp(-1.0, 1.0)
            else:
                out = xbar
            outs.append((out + 1.0) / 2.0)
            stage1s.append(stage1)
            greys.append(grey)
            t2s.append(t2)
    return SampDetoxOutput(torch.cat(outs), torch.cat(stage1s), torch.cat(greys), torch.cat(t2s))
