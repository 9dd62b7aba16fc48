"""Spectral Signatures (Tran, Li, Madry, "Spectral Signatures in Backdoor Attacks",
NeurIPS 2018).

For every class c (by the training labels, as the defender sees them): take the
penultimate-layer features R_c of the class's examples under the model trained on the
poisoned set, centre them (subtract the class mean), take the top right singular vector v
of the centred matrix, and score each example by its squared projection
``((R_i - mean_c) . v)^2`` (the "outlier score"). Poisons, when they are a separable
minority of their (target) class, lie far along v. The paper removes the
``1.5 x (expected poison rate)`` highest-scoring examples **of each class**; BaDLoss's
benchmark (METHODS.md section 3) removes 15% of the set.

Settings: ``remove_fraction`` = 0.15 (1.5 x an expected 10% poison rate) [paper, and
BaDLoss's baseline]; ``per_class_cut`` (True: the paper's cut, that fraction of every
class; False: of the whole set by score, the shared cut) [paper: per class]. Scores are
comparable within a class only; across classes they are divided by the class's largest
singular value squared (``normalise``) so that one ranking and one AUROC exist for the
whole set [open: the paper ranks within classes only].

Simplifications: features come from the model's penultimate layer (the paper uses the
representation at a late layer of a ResNet; any late layer works in their experiments);
classes with fewer than 2 examples score 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch

from detox.config import hp
from detox.data.base import ImageDataset
from detox.defenses.detectors.base import DETECTORS, Detector, DetectorContext


@dataclasses.dataclass
class SpectralConfig:
    remove_fraction: float = hp(
        0.15, "fraction", "[paper: 1.5 x the poison rate; BaDLoss's baseline: 15%]", range="[0, 1]"
    )
    per_class_cut: bool = hp(True, source="[paper]", help="remove that fraction of every class")
    normalise: bool = hp(
        True, source="[open]", help="divide each class's scores by its top singular value^2"
    )
    batch_size: int = hp(512, "images per forward pass", "[impl]", range="[1, inf)")

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"smoke": {}, "quick": {}, "paper": {}}


def spectral_scores(feats: torch.Tensor, labels: np.ndarray, normalise: bool = True) -> np.ndarray:
    """Squared projection on each class's top singular direction of its centred features."""
    scores = np.zeros(len(feats), dtype=np.float64)
    f = feats.double()
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            continue
        r = f[idx] - f[idx].mean(0, keepdim=True)
        _, s, vh = torch.linalg.svd(r, full_matrices=False)
        proj = (r @ vh[0]) ** 2
        if normalise and s[0] > 0:
            proj = proj / s[0] ** 2
        scores[idx] = proj.numpy()
    return scores


@DETECTORS.register("spectral", "spectral-signatures", "ss")
class SpectralSignatures(Detector):
    """Spectral Signatures (Tran et al. 2018): see the module docstring."""

    name = "spectral"
    Config = SpectralConfig
    needs_model = True

    def score(self, data: ImageDataset, ctx: DetectorContext) -> np.ndarray:
        from detox.defenses.features import penultimate_features

        feats = penultimate_features(ctx.model, data.x, ctx.device, self.config.batch_size)
        return spectral_scores(feats, data.y.numpy(), self.config.normalise)

    def cut(self, scores: np.ndarray, ctx: DetectorContext) -> np.ndarray:
        """The paper's cut: ``remove_fraction`` of every class (by the training labels);
        with ``per_class_cut`` off, of the whole set."""
        if not self.config.per_class_cut or ctx.labels is None:
            return super().cut(scores, ctx)
        from detox.defenses.cut import cut_fraction

        removed = np.zeros(len(scores), bool)
        protected = np.zeros(len(scores), bool)
        if ctx.probes is not None:
            protected[np.asarray(ctx.probes, dtype=np.int64)] = True
        for c in np.unique(ctx.labels):
            idx = np.flatnonzero(ctx.labels == c)
            removed[idx] = cut_fraction(scores[idx], self.remove_fraction(), protected[idx])
        return removed
