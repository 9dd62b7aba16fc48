"""Metrics of the three papers.

* **CA**: accuracy on clean test images.
* **ASR**: on triggered test images whose true label is not the attack's target, the
  fraction classified as the target.
* **PA**: accuracy of the same triggered images with respect to their true labels.
* Detection (detectors give continuous scores, higher = more suspicious; ``removed`` is the
  cut): TPR (= detection rate), FPR, precision at the cut; AUROC and AUPRC from the scores;
  per-class removal rates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _np(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def clean_accuracy(pred: Any, y_true: Any) -> float:
    pred, y_true = _np(pred), _np(y_true)
    return float((pred == y_true).mean()) if len(pred) else float("nan")


def attack_success_rate(pred: Any, y_target: Any, y_true: Any | None = None) -> float:
    """Fraction predicted as the target, over images whose true label is not the target."""
    pred, y_target = _np(pred), _np(y_target)
    keep = np.ones(len(pred), bool) if y_true is None else _np(y_true) != y_target
    return float((pred[keep] == y_target[keep]).mean()) if keep.any() else float("nan")


def poisoned_accuracy(pred: Any, y_true: Any, y_target: Any | None = None) -> float:
    """Accuracy of triggered images w.r.t. their true labels (non-target images only)."""
    pred, y_true = _np(pred), _np(y_true)
    keep = np.ones(len(pred), bool) if y_target is None else y_true != _np(y_target)
    return float((pred[keep] == y_true[keep]).mean()) if keep.any() else float("nan")


def detection_metrics(scores: Any, is_poison: Any, removed: Any | None = None) -> dict[str, float]:
    """AUROC/AUPRC of ``scores`` for ``is_poison``; TPR/FPR/precision of the ``removed`` cut."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    s, p = _np(scores).astype(np.float64), _np(is_poison).astype(bool)
    out: dict[str, float] = {"n": float(len(s)), "n_poison": float(p.sum())}
    both = 0 < p.sum() < len(p)
    out["auroc"] = float(roc_auc_score(p, s)) if both else float("nan")
    out["auprc"] = float(average_precision_score(p, s)) if both else float("nan")
    if removed is not None:
        r = _np(removed).astype(bool)
        tp, fp = (r & p).sum(), (r & ~p).sum()
        out["tpr"] = float(tp / p.sum()) if p.sum() else float("nan")
        out["fpr"] = float(fp / (~p).sum()) if (~p).sum() else float("nan")
        out["precision"] = float(tp / r.sum()) if r.sum() else float("nan")
        out["removed"] = float(r.sum())
    return out


def per_class_removal(removed: Any, labels: Any, num_classes: int) -> list[float]:
    """Fraction of each class's examples that the cut removed."""
    r, y = _np(removed).astype(bool), _np(labels).astype(np.int64)
    tot = np.bincount(y, minlength=num_classes)
    rem = np.bincount(y[r], minlength=num_classes)
    return [float(rem[c] / tot[c]) if tot[c] else float("nan") for c in range(num_classes)]


def roc_curve(scores: Any, is_poison: Any) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) points of the ROC curve."""
    from sklearn.metrics import roc_curve as _roc

    fpr, tpr, _ = _roc(_np(is_poison).astype(bool), _np(scores))
    return fpr, tpr
