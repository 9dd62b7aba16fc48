"""LF (Zeng et al. 2021): the low-pass universal adversarial perturbation, on real CIFAR-10
at smoke scale.

One artefact is built on 2,000 training images (class-balanced) with the ``quick`` preset
scaled down: a ``smoke`` surrogate trained 6 epochs on them, the UAP on 100 of them. It is
checked for: the cache (a second ``prepare`` loads it), determinism (a rebuild without the
cache gives the same bytes), the bound, its spectrum (numpy.fft as an independent oracle)
and what it does to the surrogate on CIFAR-10 test images.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from detox.attacks import attack_from_record, make_attack, poison
from detox.attacks.context import AttackContext
from detox.attacks.lf import bound, deepfool_to_target, low_pass, universal_perturbation
from detox.cache import Store
from detox.data import stratified_subsample
from detox.errors import ConfigError
from detox.training import predict

SETTINGS = {"images": 100, "surrogate_epochs": 6}  # the quick preset, scaled down
SEED = 3
#: Frequencies above this many cycles per image (radius in the 2-D FFT) count as "high".
CUTOFF = 3


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("lf-cache")
        mp.setenv("DETOX_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def small(cifar_train):
    idx = stratified_subsample(cifar_train.y, 2000, seed=0, num_classes=10)
    return cifar_train.subset(idx, name="cifar10-lf")


def _ctx(data, **kw):
    return AttackContext(train=data, seed=SEED, dataset="cifar10", progress=False, **kw)


@pytest.fixture(scope="module")
def built(cache_dir, small, one_thread):
    attack = make_attack("lf", seed=SEED, **SETTINGS)
    ctx = _ctx(small)
    attack.prepare(small, ctx)
    return {"attack": attack, "ctx": ctx}


def _spectrum_above(a: np.ndarray, cutoff: float) -> float:
    """Fraction of the energy of (C, H, W) ``a`` (each channel's mean removed) at spatial
    frequencies above ``cutoff`` cycles per image, by numpy's FFT."""
    a = a - a.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(a)) ** 2
    fy = np.fft.fftfreq(a.shape[1]) * a.shape[1]
    fx = np.fft.fftfreq(a.shape[2]) * a.shape[2]
    radius = np.hypot(fy[:, None], fx[None, :])
    return float(power[:, radius > cutoff].sum() / power.sum())


def test_artefact_is_built_once_then_read_from_the_cache(built, small):
    assert len(built["ctx"].built) == 1
    rec = built["attack"].record  # measured: 7.6 s, stopped after pass 1 at a rate of 0.34
    assert rec["images"] == 100 and rec["passes"][0]["pass"] == 0
    again = make_attack("lf", seed=SEED, **SETTINGS)
    ctx = _ctx(small)
    again.prepare(small, ctx)
    assert ctx.built == [] and again.record is None  # served from the cache
    assert torch.equal(again.delta, built["attack"].delta)
    (entry,) = Store("artefacts").entries()
    assert entry.meta["given"]["attack"] == "lf"
    stored = json.loads(entry.file("record.json").read_text())
    assert stored["passes"] == rec["passes"]


def test_artefact_is_deterministic_for_a_seed(built, small):
    again = make_attack("lf", seed=SEED, **SETTINGS)
    again.prepare(small, _ctx(small, cache=False))  # surrogate and UAP rebuilt
    assert torch.equal(again.delta, built["attack"].delta)


def test_perturbation_respects_the_bound(built):
    d = built["attack"].delta
    assert d.shape == (3, 32, 32)
    # bound="minmax" (the code's normalization): v spans exactly [0, eps]
    assert float(d.min()) == pytest.approx(0.0, abs=1e-7)
    assert float(d.max()) == pytest.approx(0.2, abs=1e-6)
    # bound="linf": scaled (not clipped) into the ball, untouched inside it
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 32, 32, generator=g)
    out = bound(v, 0.1, "linf")
    assert float(out.abs().max()) == pytest.approx(0.1, rel=1e-6)
    assert torch.allclose(out / out.abs().max(), v / v.abs().max())
    assert torch.equal(bound(v * 0.01, 0.1, "linf"), v * 0.01)
    assert torch.equal(bound(torch.ones(3, 4, 4), 0.1, "minmax"), torch.zeros(3, 4, 4))


def test_perturbation_is_low_frequency(built):
    d = built["attack"].delta.numpy().astype(np.float64)
    noise = np.random.default_rng(0).uniform(0, 0.2, size=d.shape)
    # measured: 0.0039 of the perturbation's energy above 3 cycles/image; 0.978 of
    # uniform noise's (the oracle tells them apart)
    assert _spectrum_above(d, CUTOFF) < 0.01
    assert _spectrum_above(noise, CUTOFF) > 0.9
    # the filter alone (the code's Gaussian of 6 px) on noise, same oracle
    smooth = low_pass(torch.from_numpy(noise), 6.0).numpy()
    assert _spectrum_above(smooth, CUTOFF) < 0.01


def test_perturbation_sends_clean_images_to_the_target(built, cifar_test):
    attack, ctx = built["attack"], built["ctx"]
    model = ctx.surrogate("smoke", epochs=SETTINGS["surrogate_epochs"])  # cached
    others = (cifar_test.y != 0).nonzero().flatten()[:1000]
    x = cifar_test.x[others]
    clean = float((predict(model, x) == 0).float().mean())
    triggered = float((predict(model, attack.apply_uint8(x)) == 0).float().mean())
    # measured on 1,000 non-target test images: 0.053 clean -> 0.296 with the trigger
    assert clean < 0.1
    assert triggered > 0.2 and triggered > clean + 0.15


def test_deepfool_reaches_the_target(built, small):
    model = built["ctx"].surrogate("smoke", epochs=SETTINGS["surrogate_epochs"])
    x = small.x[small.y != 0][:16].float() / 255
    r, ok = deepfool_to_target(model, x, 0, 0.02, 50)
    assert bool(ok.all())
    with torch.no_grad():
        assert bool((model(x + r).argmax(1) == 0).all())
    # minimal perturbations: far below the image's own norm (measured mean L2 ~0.4)
    assert float(r.flatten(1).norm(dim=1).mean()) < 2.0


@pytest.mark.parametrize(("deepfool", "kind"), [("raw", "minmax"), ("filtered", "linf")])
def test_uap_keeps_its_best_pass_and_stops(built, small, deepfool, kind):
    model = built["ctx"].surrogate("smoke", epochs=SETTINGS["surrogate_epochs"])
    cfg = make_attack(
        "lf", images=40, passes=4, stop_rate=1.0, plateau=2, deepfool=deepfool, bound=kind
    ).config
    x, y = small.x[:40], small.y[:40]
    delta, history = universal_perturbation(
        model, x, y, 0, cfg, generator=torch.Generator().manual_seed(0), progress=False
    )
    rates = [h["rate"] for h in history[1:]]
    assert history[0]["pass"] == 0 and 1 <= len(rates) <= 4
    if len(rates) < 4:  # stopped early: the last two passes within 0.01
        assert abs(rates[-1] - rates[-2]) < 0.01
    keep = y != 0
    with torch.no_grad():
        pred = model((x[keep].float() / 255 + delta).clamp(0, 1)).argmax(1)
    assert float((pred == 0).float().mean()) == pytest.approx(max(rates), abs=1e-4)
    assert float(delta.abs().max()) <= 0.2 + 1e-6
    # low-pass filtered: measured 0.000-0.011 above the cutoff (the L_inf clip after the
    # filter leaks a little; 0.011 on a CPU with AMX bf16 kernels), white noise > 0.9
    assert _spectrum_above(delta.numpy().astype(np.float64), CUTOFF) < 0.02


def test_poison_prepares_and_applies_it(cache_dir, small, cifar_test, one_thread):
    spec = "lf:" + ":".join(f"{k}={v}" for k, v in SETTINGS.items())
    ps = poison(small, spec, seed=1, test=cifar_test, test_limit=50)
    (rec,) = ps.attacks
    assert rec["attack"] == "lf" and rec["n_poisoned"] == 200  # 10% of 2,000
    idx = (ps.attack_id == 0).nonzero().flatten()
    assert bool((ps.y[idx] == 0).all())
    # the same attack rebuilt from the record reads the artefact poison() built
    attack = attack_from_record(rec, ps.num_classes)
    dataset = small.meta.get("dataset") or small.name  # as poison() names it
    ctx = AttackContext(train=small, seed=attack.seed, dataset=dataset, progress=False)
    attack.prepare(small, ctx)
    assert ctx.built == []
    assert torch.equal(ps.x[idx], attack.apply_uint8(small.x[idx]))
    assert len(ps.triggered["lf"]) == 50


def test_no_trigger_before_prepare_or_for_other_sizes(built):
    with pytest.raises(ConfigError, match="call prepare"):
        make_attack("lf").apply(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="the images are"):
        built["attack"].apply(torch.zeros(1, 3, 64, 64))
