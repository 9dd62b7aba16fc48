"""LC (Turner et al. 2019): the label-consistent attack, on real CIFAR-10 at smoke scale.

One artefact is built on 2,000 training images (class-balanced, 200 of the target class 0)
with the ``quick`` preset scaled down: a ``smoke`` surrogate trained 6 epochs on them, then
10 PGD steps at eps 8/255 on every target-class image. It is checked for: the cache, its
determinism, the bound, what it does to the surrogate, and the poisoning and test-time
trigger through :func:`~detox.attacks.poison`.
"""

from __future__ import annotations

import json

import pytest
import torch

from detox.attacks import attack_from_record, make_attack, poison
from detox.attacks.context import AttackContext
from detox.attacks.lc import CORNER
from detox.cache import Store
from detox.data import stratified_subsample
from detox.errors import ConfigError
from detox.training import predict

SETTINGS = {"surrogate_epochs": 6}  # the quick preset, scaled down
SEED = 3
EPS = 8  # of 255: the default (eps8)
AMP = 64  # of 255: the reduced training amplitude (the default, METHODS.md)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("lc-cache")
        mp.setenv("DETOX_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def small(cifar_train):
    idx = stratified_subsample(cifar_train.y, 2000, seed=0, num_classes=10)
    return cifar_train.subset(idx, name="cifar10-lc")


def _ctx(data, **kw):
    return AttackContext(train=data, seed=SEED, dataset="cifar10", progress=False, **kw)


@pytest.fixture(scope="module")
def built(cache_dir, small, one_thread):
    attack = make_attack("lc", seed=SEED, **SETTINGS)
    ctx = _ctx(small)
    attack.prepare(small, ctx)
    return {"attack": attack, "ctx": ctx}


def _pattern(h: int = 32, w: int = 32) -> torch.Tensor:
    """The code's all-corners mask, written out independently: (H, W) of -1 / 0 / +1."""
    p = torch.zeros(h, w)
    for r in range(3):
        for c in range(3):
            v = CORNER[r][c]
            p[r, c] = p[r, w - 1 - c] = p[h - 1 - r, c] = p[h - 1 - r, w - 1 - c] = v
    return p


def test_artefact_is_built_once_then_read_from_the_cache(built, small):
    assert len(built["ctx"].built) == 1
    rec = built["attack"].record
    assert rec["n_images"] == 200 and rec["target"] == 0
    again = make_attack("lc", seed=SEED, **SETTINGS)
    ctx = _ctx(small)
    again.prepare(small, ctx)
    assert ctx.built == [] and again.record is None  # served from the cache
    assert torch.equal(again.x_adv, built["attack"].x_adv)
    (entry,) = Store("artefacts").entries()
    assert entry.meta["given"]["attack"] == "lc"
    stored = json.loads(entry.file("record.json").read_text())
    assert stored["adv_accuracy"] == rec["adv_accuracy"]


def test_artefact_is_deterministic_for_a_seed(built, small):
    again = make_attack("lc", seed=SEED, **SETTINGS)
    again.prepare(small, _ctx(small, cache=False))  # surrogate and PGD rebuilt
    assert torch.equal(again.x_adv, built["attack"].x_adv)


def test_perturbation_covers_the_target_class_within_eps(built, small):
    a = built["attack"]
    assert torch.equal(a.index, (small.y == 0).nonzero().flatten())
    diff = a.x_adv.int() - small.x[a.index].int()
    assert int(diff.abs().max()) == EPS  # PGD reaches the bound, never beyond it
    assert float((diff != 0).float().mean()) > 0.5  # most pixels moved


def test_pgd_images_fool_the_surrogate(built, small):
    a, rec = built["attack"], built["attack"].record
    model = built["ctx"].surrogate("smoke", epochs=SETTINGS["surrogate_epochs"])  # cached
    clean = float((predict(model, small.x[a.index]) == 0).float().mean())
    adv = float((predict(model, a.x_adv) == 0).float().mean())
    # measured: the surrogate gets 0.65 of the 200 clean target-class images right, 0.165
    # of their PGD images (misclassified: 0.835; on full CIFAR-10 with the quick preset:
    # 0.736 clean, 0.000 after PGD)
    assert adv == pytest.approx(rec["adv_accuracy"], abs=0.02)
    assert clean == pytest.approx(rec["clean_accuracy"], abs=0.02)
    assert clean > 0.4
    assert 1 - adv > 0.7 and adv < clean - 0.3


def test_poison_keeps_labels_and_touches_only_target_images(cache_dir, small, cifar_test):
    spec = "lc:" + ":".join(f"{k}={v}" for k, v in SETTINGS.items())
    ps = poison(small, spec, seed=1, test=cifar_test, test_limit=50)
    (rec,) = ps.attacks
    assert rec["attack"] == "lc" and rec["label_mode"] == "clean"
    assert rec["n_poisoned"] == 20  # 10% of the 200 target-class images
    idx = (ps.attack_id == 0).nonzero().flatten()
    assert torch.equal(ps.y, small.y)  # labels unchanged
    assert bool((small.y[idx] == 0).all())
    changed = (ps.x != small.x).flatten(1).any(1)
    assert set(changed.nonzero().flatten().tolist()) <= set(idx.tolist())
    # the poisoned images: clip(x_adv + 64/255 * pattern), x_adv of the artefact
    attack = attack_from_record(rec, ps.num_classes)
    dataset = small.meta.get("dataset") or small.name  # as poison() names it
    ctx = AttackContext(train=small, seed=attack.seed, dataset=dataset, progress=False)
    attack.prepare(small, ctx)
    assert ctx.built == []  # the artefact poison() built
    row = {int(i): r for r, i in enumerate(attack.index)}
    adv = attack.x_adv[[row[int(i)] for i in idx]].int()
    want = (adv + AMP * _pattern().int()).clamp(0, 255).to(torch.uint8)
    assert torch.equal(ps.x[idx], want)
    assert attack.unmatched == 0
    # test time: full amplitude (0 / 255) in the four corners, no perturbation elsewhere
    t = ps.triggered["lc"]
    assert len(t) == 50 and bool((t.y_target == 0).all())
    p = _pattern()
    clean = cifar_test.x[t.index]
    assert bool((t.x[..., p > 0] == 255).all()) and bool((t.x[..., p < 0] == 0).all())
    assert torch.equal(t.x[..., p == 0], clean[..., p == 0])


def test_unknown_images_get_the_trigger_alone(built, cifar_test):
    a = make_attack("lc", seed=SEED, **SETTINGS)
    with pytest.raises(ConfigError, match="call prepare"):
        a.apply(torch.zeros(1, 3, 32, 32))
    a = built["attack"]
    before = a.unmatched
    x = cifar_test.x[:4]
    out = a.apply_uint8(x)
    assert a.unmatched == before + 4
    want = (x.int() + AMP * _pattern().int()).clamp(0, 255).to(torch.uint8)
    assert torch.equal(out, want)


def test_presets():
    assert make_attack("lc", preset="eps16").config.eps == pytest.approx(16 / 255)
    paper = make_attack("lc", preset="paper").config
    assert paper.steps == 100 and paper.step_size == pytest.approx(1.5 / 255)
    assert make_attack("label-consistent").name == "lc"
