"""The cut: turn continuous suspicion scores into a removal mask (shared by every detector).

Detectors return scores (higher = more suspicious); which examples to drop is decided here:

* :func:`cut_fraction`: remove a fixed fraction of the set (UltraClean 0.3, BaDLoss 0.4),
  optionally never removing ``protected`` examples (BaDLoss's probes);
* :func:`cut_threshold`: remove everything scoring above a threshold;
* :func:`cut_in_class`: only within a known target class, remove ``budget`` examples
  (UltraClean's "poisoned class known" variant: budget = c x number of poisons).

Ties are broken by index so that cuts are reproducible.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from detox.errors import ConfigError


def _scores(scores: Any) -> np.ndarray:
    s = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    s = s.astype(np.float64).ravel()
    if np.isnan(s).any():
        raise ConfigError("scores contain NaN; a detector must score every example")
    return s


def _top(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores among ``candidates`` (stable: lower index first)."""
    order = candidates[np.lexsort((candidates, -scores[candidates]))]
    return order[:k]


def cut_fraction(
    scores: Any, fraction: float, protected: Any | None = None, of: str = "all"
) -> np.ndarray:
    """Remove the ``fraction`` highest-scoring examples; ``protected`` ones are never removed.

    ``of="all"`` takes the fraction of the whole set (as BaDLoss and UltraClean do);
    ``of="unprotected"`` of the unprotected examples only. Returns a boolean removal mask.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"removal fraction must lie in [0, 1], got {fraction}")
    s = _scores(scores)
    prot = np.zeros(len(s), bool) if protected is None else np.asarray(protected, bool)
    cand = np.flatnonzero(~prot)
    base = len(s) if of == "all" else len(cand)
    k = min(int(round(fraction * base)), len(cand))
    removed = np.zeros(len(s), bool)
    removed[_top(s, cand, k)] = True
    return removed


def cut_count(scores: Any, count: int, protected: Any | None = None) -> np.ndarray:
    """Remove exactly ``count`` highest-scoring unprotected examples."""
    s = _scores(scores)
    prot = np.zeros(len(s), bool) if protected is None else np.asarray(protected, bool)
    cand = np.flatnonzero(~prot)
    if not 0 <= count <= len(cand):
        raise ConfigError(f"cannot remove {count} of {len(cand)} removable examples")
    removed = np.zeros(len(s), bool)
    removed[_top(s, cand, count)] = True
    return removed


def cut_threshold(scores: Any, threshold: float, protected: Any | None = None) -> np.ndarray:
    """Remove every unprotected example scoring strictly above ``threshold``."""
    s = _scores(scores)
    removed = s > threshold
    if protected is not None:
        removed &= ~np.asarray(protected, bool)
    return removed


def cut_in_class(scores: Any, labels: Any, target: int, budget: int) -> np.ndarray:
    """Within class ``target`` only, remove the ``budget`` highest-scoring examples."""
    s = _scores(scores)
    y = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    cand = np.flatnonzero(y == target)
    if len(cand) == 0:
        raise ConfigError(f"target class {target} has no examples")
    removed = np.zeros(len(s), bool)
    removed[_top(s, cand, min(int(budget), len(cand)))] = True
    return removed


CUTS = {"fraction": cut_fraction, "count": cut_count, "threshold": cut_threshold}
