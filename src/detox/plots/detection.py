"""Detector figures: score histogram split clean / per attack, and ROC curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detox.plots import save_figure


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def score_histogram(
    scores: np.ndarray,
    attack_id: np.ndarray,
    attack_names: list[str],
    out_png: str | Path,
    title: str = "",
    cut: float | None = None,
) -> Path:
    """Histogram of scores: clean examples vs each attack's poisons (density)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    bins = np.linspace(float(np.min(scores)), float(np.max(scores)) + 1e-12, 60)
    ax.hist(scores[attack_id < 0], bins=bins, density=True, alpha=0.55, label="clean", color="0.5")
    for i, name in enumerate(attack_names):
        s = scores[attack_id == i]
        if len(s):
            ax.hist(s, bins=bins, density=True, alpha=0.55, histtype="stepfilled", label=name)
    if cut is not None:
        ax.axvline(cut, color="k", ls="--", lw=1, label="cut")
    ax.set_xlabel("suspicion score")
    ax.set_ylabel("density")
    ax.set_title(title or "scores: clean vs poisoned")
    ax.legend(fontsize=8)
    return save_figure(fig, out_png)


def roc_plot(
    scores: np.ndarray,
    attack_id: np.ndarray,
    attack_names: list[str],
    out_png: str | Path,
    title: str = "",
) -> Path:
    """ROC curve of all poisons vs clean, and of each attack vs clean, with AUROC."""
    from detox.metrics import detection_metrics, roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.6), dpi=110)
    curves = [("all attacks", np.ones(len(scores), bool), attack_id >= 0)]
    for i, name in enumerate(attack_names):
        sel = (attack_id == i) | (attack_id < 0)
        curves.append((name, sel, attack_id[sel] == i))
    for name, sel, pos in curves:
        if 0 < pos.sum() < len(pos):
            fpr, tpr = roc_curve(scores[sel], pos)
            auc = detection_metrics(scores[sel], pos)["auroc"]
            ax.plot(fpr, tpr, lw=2 if name == "all attacks" else 1, label=f"{name} ({auc:.3f})")
    ax.plot([0, 1], [0, 1], color="0.7", ls=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title or "ROC (AUROC)")
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, out_png)
