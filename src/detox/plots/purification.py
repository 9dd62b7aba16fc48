"""Purification figures: before/after grids and the SampDetox figure (poisoned image,
stage-1 output, trigger map, final output per attack)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from detox.plots import save_figure


def _img(x: torch.Tensor) -> np.ndarray:
    x = x.detach().cpu()
    if x.dtype != torch.uint8:
        x = x.clamp(0, 1).mul(255).round().to(torch.uint8)
    a = x.permute(1, 2, 0).numpy()
    return a[..., 0] if a.shape[-1] == 1 else a


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def purification_grid(before: torch.Tensor, after: torch.Tensor, out_png: str | Path) -> Path:
    """Two rows: inputs and their purified versions."""
    plt = _plt()
    n = len(before)
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n, 3.0), dpi=110, squeeze=False)
    for j in range(n):
        for i, (row, name) in enumerate(((before, "input"), (after, "purified"))):
            ax = axes[i][j]
            ax.imshow(_img(row[j]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
    return save_figure(fig, out_png)


def sampdetox_figure(
    rows: dict[str, dict[str, torch.Tensor]], out_png: str | Path, title: str = ""
) -> Path:
    """One row per attack: poisoned input, stage-1 output, trigger map (1 - grey SSIM),
    final output. ``rows[name]`` holds tensors ``x``, ``stage1``, ``grey``, ``final`` of one
    image (C,H,W floats in [0,1]; ``grey`` H,W)."""
    plt = _plt()
    cols = ("x", "stage1", "grey", "final")
    names = ("poisoned", "stage 1", "trigger map", "purified")
    fig, axes = plt.subplots(
        len(rows), 4, figsize=(6.0, 1.5 * len(rows) + 0.4), dpi=110, squeeze=False
    )
    for i, (attack, r) in enumerate(rows.items()):
        for j, key in enumerate(cols):
            ax = axes[i][j]
            if key == "grey":
                ax.imshow((1 - r[key]).detach().cpu().numpy(), cmap="magma", vmin=0, vmax=1)
            else:
                ax.imshow(_img(r[key]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(names[j], fontsize=8)
            if j == 0:
                ax.set_ylabel(attack, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, out_png)
