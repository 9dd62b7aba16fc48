"""Zeng et al.'s frequency-based detector (``frequency-detector``) on real CIFAR-10 at smoke
scale. Oracles: SciPy's orthonormal DCT (``scipy.fft.dctn``) for the spectrum, OpenCV's
8-bit HLS for the shadow's halved lightness, the requested cut sizes; the planted set is
2,000 CIFAR-10 training images of which 100 carry BadNets' patch and 100 Blended's pattern,
with 500 other clean ones as the trusted probes the detector trains on."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import scipy.fft
import torch

from detox.data import ImageDataset
from detox.defenses.detectors import DETECTORS, DetectorContext, build_detector
from detox.defenses.detectors.frequency import (
    FrequencyDetector,
    _halve_lightness,
    corrupt,
    dct2,
    dct_matrix,
)
from detox.errors import ConfigError
from detox.metrics import detection_metrics

ATTACKS = ("badnets", "blended")


@pytest.fixture(scope="module")
def planted_set(cifar_train, one_thread):
    from detox.attacks import make_attack
    from detox.data import ImageDataset, stratified_subsample

    idx = stratified_subsample(cifar_train.y, 2000, seed=3, num_classes=10)
    x, y = cifar_train.x[idx].clone(), cifar_train.y[idx].clone()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    kind = np.zeros(len(x), np.int64)  # 0 clean, i + 1 the i-th attack
    for i, name in enumerate(ATTACKS):
        sel = perm[100 * i : 100 * (i + 1)]
        x[sel] = make_attack(name).apply_uint8(x[sel])
        kind[sel.numpy()] = i + 1
    probes = np.sort(perm[200:700].numpy())
    data = ImageDataset(x, y, list(cifar_train.classes), "planted-frequency")
    return {"data": data, "kind": kind, "probes": probes}


def _ctx(p, seed=0, probes=None):
    probes = p["probes"] if probes is None else probes
    trusted = p["data"].subset(torch.from_numpy(probes))
    return DetectorContext(labels=p["data"].y.numpy(), seed=seed, probes=probes,
                           trusted=trusted, progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def scored(planted_set):
    det = build_detector("frequency-detector", "smoke")
    ctx = _ctx(planted_set)
    return det, ctx, det.score(planted_set["data"], ctx)


def test_dct_matches_scipys_orthonormal_dct(cifar_train):
    rng = np.random.default_rng(0)
    for shape in ((4, 3, 32, 32), (2, 1, 12, 20), (5, 8)):
        a = rng.normal(size=shape) * 100
        want = scipy.fft.dctn(a, axes=(-2, -1), norm="ortho")
        np.testing.assert_allclose(dct2(torch.from_numpy(a)).numpy(), want, atol=1e-9)
    img = cifar_train.x[:16]  # what the detector sees: pixel values in [0, 255]
    want = scipy.fft.dctn(img.numpy().astype(np.float64), axes=(-2, -1), norm="ortho")
    np.testing.assert_allclose(dct2(img.double()).numpy(), want, atol=1e-5)
    np.testing.assert_allclose(dct2(img).numpy(), want, rtol=1e-5, atol=2e-3)  # float32 path
    d = dct_matrix(7)
    np.testing.assert_allclose((d @ d.T).numpy(), np.eye(7), atol=1e-12)  # orthonormal


def test_shadow_halves_the_hls_lightness_like_opencv(cifar_train):
    img = cifar_train.x[:40]
    got = _halve_lightness(img.float()).clamp(0, 255).floor().to(torch.uint8)
    for i in range(len(img)):
        hls = cv2.cvtColor(np.ascontiguousarray(img[i].permute(1, 2, 0).numpy()),
                           cv2.COLOR_RGB2HLS)  # fmt: skip
        hls[:, :, 1] = hls[:, :, 1] * 0.5  # albumentations' add_shadow, on the whole image
        want = cv2.cvtColor(hls, cv2.COLOR_HLS2RGB).astype(np.int64)
        diff = np.abs(got[i].permute(1, 2, 0).numpy().astype(np.int64) - want)
        assert diff.max() <= 4  # OpenCV's 8-bit HLS rounds H, L and S (measured: at most 4)


def test_corruptions_are_the_codes_five_kinds(cifar_train):
    x, pool = cifar_train.x[:400], cifar_train.x[400:450]
    out, kind = corrupt(x, pool, torch.Generator().manual_seed(5))
    again, kind2 = corrupt(x, pool, torch.Generator().manual_seed(5))
    assert torch.equal(out, again) and torch.equal(kind, kind2)
    counts = torch.bincount(kind, minlength=5)
    assert counts.min() >= 50, counts  # uniform over 5 kinds: 80 expected each
    changed = (out != x).any(1)  # (N, H, W)
    for i in torch.nonzero(kind == 0).flatten().tolist():  # white block in a corner
        r, c = torch.nonzero(changed[i], as_tuple=True)
        if len(r) == 0:
            continue  # the image was already white there
        assert (out[i][:, changed[i]] == 255).all()
        assert int(r.max() - r.min()) < 7 and int(c.max() - c.min()) < 7
        assert min(int(r.min()), 31 - int(r.max())) <= 5 + 6
        assert min(int(c.min()), 31 - int(c.max())) <= 5 + 6
    for i in torch.nonzero(kind == 3).flatten().tolist():  # shadows: the lower half, darker
        assert not changed[i, :16].any()
        assert (out[i] <= x[i]).all()
    noisy = out[kind == 2].float() - x[kind == 2].float()
    assert 15 < noisy.mean() < 25  # mean 25, less where it saturates at 255
    assert changed[kind == 4].float().mean() > 0.9  # + 0.3 x another image


def test_detector_separates_badnets_and_blended(planted_set, scored):
    det, ctx, s = scored
    kind, probes = planted_set["kind"], planted_set["probes"]
    keep = np.ones(len(s), bool)
    keep[probes] = False  # the detector trained on these as clean
    for i, name in enumerate(ATTACKS, 1):
        sel = keep & ((kind == 0) | (kind == i))
        auroc = detection_metrics(s[sel], kind[sel] == i)["auroc"]
        # measured (smoke, seeds 0/1/2): BadNets 0.9998/1.0/1.0, Blended 0.9998/1.0/1.0
        assert auroc >= 0.95, (name, auroc)
    removed = det.cut(s, ctx)  # the classifier's verdict: p(corrupted) > 0.5
    p = ctx.artifacts["frequency-detector"]["p_corrupted"]
    np.testing.assert_array_equal(removed & keep, (p > 0.5) & keep)
    assert not removed[probes].any()
    assert removed[kind > 0].mean() >= 0.9  # measured: every poison, seeds 0/1/2
    assert removed[keep & (kind == 0)].mean() <= 0.2  # measured FPR 0.018/0.123/0.029


def test_fraction_cut_removes_the_requested_count(planted_set, scored):
    _, ctx, s = scored
    det = build_detector("fd", "smoke", cut="fraction", remove_fraction=0.1)
    removed = det.cut(s, ctx)
    assert removed.sum() == 200  # 10% of 2,000, none of them a probe
    assert not removed[planted_set["probes"]].any()
    # measured (seed 0): 199 of the 200 poisons among the 200 highest scores
    assert removed[planted_set["kind"] > 0].sum() >= 190


def test_same_seed_same_scores_other_seed_other_scores(planted_set):
    tiny = {"n_probes": 32, "epochs": 2, "width": 0.25, "batch_size": 16}
    det = build_detector("zeng", "smoke", **tiny)
    probes = planted_set["probes"][:32]
    data = planted_set["data"].subset(torch.arange(300))
    a = det.score(data, _ctx(planted_set, seed=1, probes=probes))
    b = det.score(data, _ctx(planted_set, seed=1, probes=probes))
    c = det.score(data, _ctx(planted_set, seed=2, probes=probes))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_bad_input_is_refused_clearly(planted_set):
    det = build_detector("frequency-detector", "smoke", epochs=1)
    data = planted_set["data"]
    with pytest.raises(ConfigError, match="at least 16"):
        det.score(data, _ctx(planted_set, probes=planted_set["probes"][:5]))
    with pytest.raises(ConfigError, match="trusted clean examples"):
        det.score(data, DetectorContext(seed=0, progress=False))
    small = ImageDataset(data.x[:40, :, :8, :8].contiguous(), data.y[:40], data.classes)
    with pytest.raises(ConfigError, match="at least 12x12"):
        det.score(small, _ctx(planted_set))
    with pytest.raises(ConfigError):
        build_detector("frequency-detector", n_probes=4)


def test_registered_once_beside_the_frequency_attack():
    from detox.attacks import ATTACKS as ATTACK_REGISTRY
    from detox.pipeline.defenses import defense_kind

    assert DETECTORS.get("fd") is DETECTORS.get("zeng") is FrequencyDetector
    assert defense_kind("frequency-detector").name == "detector"
    assert "frequency" in ATTACK_REGISTRY and "frequency" not in DETECTORS
    assert FrequencyDetector.needs_probes and not FrequencyDetector.needs_model
