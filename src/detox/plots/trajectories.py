"""Loss-trajectory plot (BaDLoss): median and interquartile band per epoch, clean vs each attack.

Uses matplotlib's object API with the Agg canvas (no pyplot state, no display needed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CLEAN_COLOR = "#333333"


def _np(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def plot_trajectories(
    traj: Any,
    attack_id: Any,
    attack_names: Sequence[str],
    out_png: str | os.PathLike,
    *,
    probe_traj: Any | None = None,
    kept_epochs: Sequence[int] | None = None,
    title: str | None = None,
    log_y: bool = False,
    center: str = "median",
) -> Path:
    """Plot per-epoch median and 25-75% quantiles of the loss of clean examples
    (``attack_id == -1``) and of each attack's examples (``center="mean"``: the mean, with
    the same quantile band).

    ``traj``: (N, E) losses; ``attack_id``: (N,) attack index into ``attack_names``, -1 =
    clean; ``probe_traj``: optional (P, E) probe trajectories, drawn dashed;
    ``kept_epochs``: optional epochs kept by the epoch filter (dropped ones are shaded).
    Writes ``out_png`` (parent folders created) and returns its path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if center not in ("median", "mean"):
        raise ValueError(f"center={center!r}: expected 'median' or 'mean'")
    t = _np(traj).astype(np.float64)
    ids = _np(attack_id).astype(np.int64).ravel()
    if t.ndim != 2 or len(ids) != len(t):
        raise ValueError(f"traj must be (N, E) with N = len(attack_id); got {t.shape}, {len(ids)}")
    epochs = np.arange(1, t.shape[1] + 1)
    fig = Figure(figsize=(7.0, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)

    groups: list[tuple[str, np.ndarray, str | None]] = [("clean", ids < 0, CLEAN_COLOR)]
    groups += [(str(name), ids == i, None) for i, name in enumerate(attack_names)]
    for label, mask, color in groups:
        if not mask.any():
            continue
        rows = t[mask]
        q25, med, q75 = np.nanpercentile(rows, [25, 50, 75], axis=0)
        if center == "mean":
            med = np.nanmean(rows, axis=0)
        (line,) = ax.plot(
            epochs,
            med,
            color=color,
            lw=2 if label == "clean" else 1.5,
            label=f"{label} (n={int(mask.sum())})",
        )
        ax.fill_between(epochs, q25, q75, color=line.get_color(), alpha=0.18, lw=0)
    if probe_traj is not None:
        p = _np(probe_traj).astype(np.float64)
        if len(p):
            ax.plot(
                epochs,
                np.nanmean(p, axis=0) if center == "mean" else np.nanmedian(p, axis=0),
                color=CLEAN_COLOR,
                ls="--",
                lw=1,
                label=f"probes (n={len(p)})",
            )
    if kept_epochs is not None:
        kept = set(int(e) for e in kept_epochs)
        for e in range(t.shape[1]):
            if e not in kept:
                ax.axvspan(e + 0.5, e + 1.5, color="red", alpha=0.08, lw=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy loss (eval mode)")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlim(0.8, max(1, t.shape[1]) + 0.2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title or f"Loss trajectories: {center} and interquartile range")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
