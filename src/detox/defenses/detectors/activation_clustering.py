"""Activation Clustering (Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee, Molloy,
Srivastava, "Detecting Backdoor Attacks on Deep Neural Networks by Activation
Clustering", SafeAI@AAAI 2019).

For every class c (by the training labels): the penultimate-layer activations of its
examples under the model trained on the poisoned set, reduced to ``n_components`` = 10
dimensions (ICA [paper]; PCA as an option), split by 2-means. A poisoned class holds two
populations, its own images and the relabelled poisons, so it splits into a large and a
small cluster. The paper's **relative-size analysis** flags the class when the smaller
cluster holds less than ``size_threshold`` of it (0.35, the paper's and IBM ART's value)
and removes that cluster; ``analysis = "silhouette"`` flags it when the 2-means
silhouette score exceeds ``silhouette_threshold`` (0.10, ART's default) instead.

Score (for AUROC and the report): an example's distance, in the reduced space, to the
centroid of its class's larger cluster, divided by the median of that distance in the
class [open: the paper gives verdicts, not scores]. The cut is the method's own: the small
clusters of flagged classes (the shared fraction cut is used only with
``cut = "fraction"``).

Simplifications: activations of the penultimate layer (the paper uses the last hidden
layer, which is that); the ICA is fitted per class on at most ``max_fit`` examples (all of
a CIFAR-10 class at 5,000) with the run's seed; classes with fewer than 4 examples are
never flagged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from detox.config import hp
from detox.data.base import ImageDataset
from detox.defenses.detectors.base import DETECTORS, Detector, DetectorContext
from detox.errors import ConfigError
from detox.utils.seed import derive_seed


@dataclasses.dataclass
class ActivationClusteringConfig:
    n_components: int = hp(10, "dimensions", "[paper]", range="[1, inf)")
    reduction: str = hp("ica", "ica | pca", "[paper: ICA]", choices=("ica", "pca"))
    analysis: str = hp(
        "size", "size | silhouette", "[paper: relative size]", choices=("size", "silhouette")
    )
    size_threshold: float = hp(0.35, "fraction of the class", "[paper, ART]", range="(0, 0.5]")
    silhouette_threshold: float = hp(0.10, "silhouette score", "[ART]", range="[-1, 1]")
    cut: str = hp(
        "clusters",
        "clusters | fraction",
        "[paper: clusters]",
        help="remove the flagged small clusters, or remove_fraction of the set by score",
        choices=("clusters", "fraction"),
    )
    remove_fraction: float = hp(0.15, "fraction", "[open] (cut = fraction)", range="[0, 1]")
    max_fit: int = hp(5000, "examples", "[impl] fitted per class", range="[10, inf)")
    batch_size: int = hp(512, "images per forward pass", "[impl]", range="[1, inf)")

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"smoke": {}, "quick": {}, "paper": {}}


def cluster_class(
    feats: np.ndarray, cfg: ActivationClusteringConfig, seed: int
) -> tuple[np.ndarray, np.ndarray, bool, float]:
    """(scores, in-small-cluster mask, flagged, silhouette) for one class's features."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA, FastICA
    from sklearn.metrics import silhouette_score

    n = len(feats)
    k = min(cfg.n_components, feats.shape[1], n - 1)
    rng = np.random.default_rng(seed)
    fit = feats if n <= cfg.max_fit else feats[rng.choice(n, cfg.max_fit, replace=False)]
    if cfg.reduction == "ica":
        red = FastICA(n_components=k, random_state=seed % 2**31, max_iter=1000, tol=1e-3)
    else:
        red = PCA(n_components=k, random_state=seed % 2**31)
    z = red.fit(fit).transform(feats)
    km = KMeans(n_clusters=2, n_init=10, random_state=seed % 2**31).fit(z)
    sizes = np.bincount(km.labels_, minlength=2)
    big = int(np.argmax(sizes))
    small = km.labels_ != big
    sil = float(silhouette_score(z, km.labels_)) if sizes.min() > 0 else -1.0
    d = np.linalg.norm(z - km.cluster_centers_[big], axis=1)
    scores = d / max(float(np.median(d)), 1e-12)
    if cfg.analysis == "size":
        flagged = sizes.min() / n < cfg.size_threshold
    else:
        flagged = sil > cfg.silhouette_threshold
    return scores, small, bool(flagged), sil


@DETECTORS.register("activation-clustering", "ac")
class ActivationClustering(Detector):
    """Activation Clustering (Chen et al. 2019): see the module docstring."""

    name = "activation-clustering"
    Config = ActivationClusteringConfig
    needs_model = True

    def score(self, data: ImageDataset, ctx: DetectorContext) -> np.ndarray:
        from detox.defenses.features import penultimate_features

        feats = penultimate_features(ctx.model, data.x, ctx.device, self.config.batch_size)
        feats = feats.numpy().astype(np.float64)
        labels = data.y.numpy()
        scores = np.zeros(len(feats))
        in_small = np.zeros(len(feats), bool)
        report = {}
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            if len(idx) < 4:
                continue
            s, small, flagged, sil = cluster_class(
                feats[idx], self.config, derive_seed(ctx.seed, "activation-clustering", int(c))
            )
            scores[idx] = s
            in_small[idx] = small & flagged
            report[int(c)] = {
                "flagged": flagged,
                "small_cluster": int(small.sum()),
                "size": len(idx),
                "silhouette": sil,
            }
        ctx.artifacts["activation_clustering"] = {"removed": in_small, "classes": report}
        return scores

    def own_cut(self, scores: np.ndarray, ctx: DetectorContext) -> np.ndarray:
        """The small clusters of the flagged classes."""
        ac = ctx.artifacts.get("activation_clustering")
        if ac is None:
            raise ConfigError("Activation Clustering: cut() needs the clusters score() records")
        return np.asarray(ac["removed"], bool)
