"""STRIP (detector and input filter) on the planted BadNets set of conftest.py (real
CIFAR-10, smoke scale). Oracle for the entropy: OpenCV's addWeighted for the blend and
SciPy's entropy, one image and one blend at a time."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import scipy.stats
import torch

from detox.defenses.context import DefenseContext
from detox.defenses.detectors import DetectorContext, build_detector
from detox.defenses.detectors.strip import entropy_threshold, strip_entropy
from detox.defenses.filters import build_filter
from detox.errors import ConfigError
from detox.metrics import detection_metrics


def test_entropy_matches_opencv_blends_and_scipy_entropy(planted):
    model = planted["model"].eval()
    x, pool = planted["data"].x[:6], planted["data"].x[100:140]
    got = strip_entropy(model, x, pool, n_perturb=5, seed=3, batch_size=7)
    partners = torch.randint(len(pool), (len(x), 5), generator=torch.Generator().manual_seed(3))
    for i in range(len(x)):
        ents = []
        for j in partners[i].tolist():
            a = np.ascontiguousarray(pool[j].permute(1, 2, 0).numpy())
            b = np.ascontiguousarray(x[i].permute(1, 2, 0).numpy())
            mix = cv2.addWeighted(a, 1, b, 1, 0)  # the authors' superimposition (saturating)
            t = torch.from_numpy(mix).permute(2, 0, 1)[None].float() / 255
            with torch.no_grad():
                p = torch.softmax(model(t), 1)[0].double().numpy()
            ents.append(scipy.stats.entropy(p, base=2))
        assert got[i] == pytest.approx(np.mean(ents), abs=1e-5)
    # one row of partners per input: the batch size changes nothing
    again = strip_entropy(model, x, pool, n_perturb=5, seed=3, batch_size=2048)
    np.testing.assert_allclose(got, again, atol=1e-6)


def test_threshold_is_the_normal_quantile():
    e = np.random.default_rng(0).normal(3.0, 0.5, size=20_000)
    # norm.ppf(0.01) = mean - 2.326 std
    assert entropy_threshold(e, 0.01) == pytest.approx(3.0 - 2.3263 * 0.5, abs=0.02)
    assert entropy_threshold(e, 0.05, "quantile") == pytest.approx(np.quantile(e, 0.05))
    with pytest.raises(ConfigError, match="at least 2"):
        entropy_threshold(np.ones(1), 0.01)


def _trusted(planted, n=200):
    clean = np.flatnonzero(~planted["is_poison"])
    idx = clean[np.random.default_rng(1).permutation(len(clean))[:n]]
    return idx, planted["data"].subset(torch.from_numpy(idx))


def test_strip_detector_finds_the_planted_patch(planted):
    probes, trusted = _trusted(planted)
    det = build_detector("strip", "smoke")
    ctx = DetectorContext(model=planted["model"], labels=planted["data"].y.numpy(), seed=0,
                          probes=probes, trusted=trusted, progress=False)  # fmt: skip
    s = det.score(planted["data"], ctx)
    m = detection_metrics(s, planted["is_poison"])
    assert m["auroc"] >= 0.95, m  # measured: AUROC 0.987
    removed = det.cut(s, ctx)
    poison = planted["is_poison"]
    assert removed[poison].mean() >= 0.8  # measured: TPR 0.89 at the 1% FRR threshold
    assert removed[~poison].mean() <= 0.06  # measured: FPR 0.035 (8 blends: a noisy entropy)
    assert not removed[probes].any()
    np.testing.assert_array_equal(s, det.score(planted["data"], ctx))


def test_strip_filter_refuses_triggered_inputs(planted, cifar_train):
    from detox.attacks import make_attack

    _, trusted = _trusted(planted)
    filt = build_filter("strip-filter", "smoke")
    ctx = DefenseContext(model=planted["model"], trusted=trusted, seed=0, progress=False)
    filt.fit(ctx)
    other = torch.nonzero(cifar_train.y != 0).flatten()[2000:2300]
    clean = cifar_train.x[other]
    triggered = make_attack("badnets").apply_uint8(clean)
    frr = filt.reject(clean, ctx).mean()
    caught = filt.reject(triggered, ctx).mean()
    assert caught >= 0.85, caught  # measured: 0.96 of the triggered inputs refused
    assert frr <= 0.08, frr  # measured: 0.04 (a 1% FRR fitted on 200 trusted images)


def test_both_forms_are_defenses_of_their_kind():
    from detox.pipeline.defenses import defense_kind, defense_names

    assert defense_kind("strip").name == "detector"
    assert defense_kind("strip-filter").name == "filter"
    names = defense_names()
    assert len(names) == len(set(names)), "a defense name is registered by two kinds"
