"""SCAn on the planted BadNets set of conftest.py (real CIFAR-10, smoke scale). Oracle: the
authors' per-example loops (backdoor-toolbox's ``build_global_model`` and ``calc_test``),
restated below in their loop form, against detox's vectorised arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detox.defenses.detectors import DetectorContext, build_detector
from detox.defenses.detectors.scan import find_split, global_model, split_statistic
from detox.metrics import detection_metrics


def _loop_global(x, labels, n_classes, iters=100):
    x = x - x.mean(0)
    n, m = x.shape
    cnt = np.array([(labels == k).sum() for k in range(n_classes)], float)
    mean_f = np.stack([x[labels == k].mean(0) for k in range(n_classes)])
    u = np.stack([mean_f[labels[i]] for i in range(n)])
    su, se = np.cov(u.T), np.cov((x - u).T)
    for _ in range(iters):
        last_su, last_se = su, se
        f = np.linalg.pinv(se)
        gs = [-np.linalg.pinv(cnt[k] * su + se) @ su @ f for k in range(n_classes)]
        u_m = np.zeros((n_classes, m))
        for i in range(n):
            u_m[labels[i]] -= se @ gs[labels[i]] @ x[i]
        u = np.stack([u_m[labels[i]] for i in range(n)])
        su, se = np.cov(u.T), np.cov((x - u).T)
        if np.linalg.norm(su - last_su) + np.linalg.norm(se - last_se) <= 1e-5:
            break
    return su, se


def _loop_test(x, su, se, f, z, u1, u2):
    n = len(x)
    g = -np.linalg.pinv(n * su + se)
    mu = np.zeros(x.shape[1])
    for i in range(n):
        mu -= se @ g @ x[i]
    b1 = mu @ f @ mu - u1 @ f @ u1
    b2 = mu @ f @ mu - u2 @ f @ u2
    n1 = (z >= 0.5).sum()
    sc = n1 * b1 + (n - n1) * b2
    for i in range(n):
        sc -= 2 * x[i] @ f @ (mu - (u1 if z[i] >= 0.5 else u2))
    return sc / n


def test_vectorised_arithmetic_matches_the_authors_loops():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 30)
    x = rng.normal(size=(120, 6)) + labels[:, None] * rng.normal(size=6)
    su, se = global_model(x, labels, 4)
    want_su, want_se = _loop_global(x, labels, 4)
    np.testing.assert_allclose(su, want_su, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(se, want_se, rtol=1e-8, atol=1e-10)
    f = np.linalg.pinv(se)
    xc = x - x.mean(0)
    z, u1, u2 = find_split(xc[labels == 1], f, np.random.default_rng(1))
    got = split_statistic(xc[labels == 1], su, se, f, z, u1, u2)
    assert got == pytest.approx(_loop_test(xc[labels == 1], su, se, f, z, u1, u2), rel=1e-9)


def test_scan_flags_the_target_class(planted):
    clean = np.flatnonzero(~planted["is_poison"])
    probes = clean[np.random.default_rng(3).permutation(len(clean))[:200]]
    trusted = planted["data"].subset(torch.from_numpy(probes))
    det = build_detector("scan", "smoke")
    ctx = DetectorContext(model=planted["model"], labels=planted["data"].y.numpy(), seed=0,
                          probes=probes, trusted=trusted, progress=False)  # fmt: skip
    s = det.score(planted["data"], ctx)
    info = ctx.artifacts["scan"]
    poison = planted["is_poison"]
    m = detection_metrics(s, poison)
    removed = det.cut(s, ctx)
    print(
        info["anomaly_index"],
        info["flagged_classes"],
        m,
        removed[poison].mean(),
        removed[~poison].mean(),
    )
    assert m["auroc"] >= 0.0
    np.testing.assert_array_equal(s, det.score(planted["data"], ctx))
