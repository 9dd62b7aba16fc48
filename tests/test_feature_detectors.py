"""Spectral Signatures and Activation Clustering on a planted BadNets set (real CIFAR-10,
smoke scale: the ``planted`` fixture of conftest.py). Oracles: NumPy's SVD for the spectral
scores, the requested cut sizes."""

from __future__ import annotations

import numpy as np
import torch

from detox.defenses.detectors import DetectorContext, build_detector
from detox.defenses.detectors.spectral import spectral_scores
from detox.metrics import detection_metrics


def _ctx(p, seed=0):
    return DetectorContext(model=p["model"], labels=p["data"].y.numpy(), seed=seed, progress=False)


def test_spectral_scores_match_numpys_svd():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(60, 8))
    labels = np.repeat([0, 1, 2], 20)
    got = spectral_scores(torch.from_numpy(feats), labels, normalise=False)
    for c in range(3):
        r = feats[labels == c] - feats[labels == c].mean(0)
        v = np.linalg.svd(r)[2][0]
        np.testing.assert_allclose(got[labels == c], (r @ v) ** 2, rtol=1e-10)


def test_spectral_signatures_find_the_planted_patch(planted):
    assert planted["asr"] >= 0.9, planted["asr"]  # the victim learned it (measured 0.995)
    det = build_detector("spectral")
    ctx = _ctx(planted)
    s = det.score(planted["data"], ctx)
    poison, c0 = planted["is_poison"], planted["data"].y.numpy() == 0
    # measured: AUROC 0.9999 within the target class (scores rank within a class), 0.82
    # over the whole set (each class normalised by its top singular value)
    assert detection_metrics(s[c0], poison[c0])["auroc"] >= 0.98
    assert detection_metrics(s, poison)["auroc"] >= 0.75
    removed = det.cut(s, ctx)
    # the paper's cut: 15% of every class; in the target class (280 examples, 80 poisons)
    # the 42 removed are all poisons (measured)
    for c in range(10):
        n_c = int((planted["data"].y == c).sum())
        assert removed[planted["data"].y.numpy() == c].sum() == round(0.15 * n_c)
    assert (removed & poison).sum() >= 40
    np.testing.assert_array_equal(s, det.score(planted["data"], _ctx(planted)))


def test_activation_clustering_flags_the_target_class(planted):
    det = build_detector("activation-clustering")
    ctx = _ctx(planted, seed=5)
    s = det.score(planted["data"], ctx)
    poison, c0 = planted["is_poison"], planted["data"].y.numpy() == 0
    classes = ctx.artifacts["activation_clustering"]["classes"]
    assert classes[0]["flagged"] and classes[0]["small_cluster"] == 80
    removed = det.cut(s, ctx)
    # measured: every poison removed (the small cluster of class 0 is exactly the 80
    # poisons), 109 clean examples too (other classes split below the size threshold);
    # AUROC 0.90 within the target class, 0.82 over the set
    assert removed[poison].all()
    assert removed.sum() <= 250
    assert detection_metrics(s[c0], poison[c0])["auroc"] >= 0.85
    assert detection_metrics(s, poison)["auroc"] >= 0.75
    s2 = det.score(planted["data"], _ctx(planted, seed=5))
    np.testing.assert_array_equal(s, s2)
