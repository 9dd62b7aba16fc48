"""ISSBA (Li et al., ICCV 2021): the StegaStamp-style encoder/decoder detox trains itself,
on real CIFAR-10 at smoke scale.

One artefact is built on 2,000 class-balanced training images with the ``quick`` networks
and a shortened schedule (6 epochs of 32 batches, 2 of them secret-only). It is checked
for: the cache and the export/import round trip, determinism (a rebuild without the cache
gives the same bytes), the decoder reading the secret back from triggered *test* images
(images it never trained on), the trigger's invisibility by scikit-image's PSNR (an
independent oracle), and that the trigger is sample-specific.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from detox.attacks import make_attack, poison
from detox.attacks.context import AttackContext
from detox.attacks.issba import bit_accuracy
from detox.cache import Store
from detox.data import stratified_subsample
from detox.errors import ConfigError

SETTINGS = {"enc_images": 2000, "epochs": 6, "secret_only_epochs": 2}
SEED = 3


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("issba-cache")
        mp.setenv("DETOX_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def small(cifar_train):
    idx = stratified_subsample(cifar_train.y, 2000, seed=0, num_classes=10)
    return cifar_train.subset(idx, name="cifar10-issba")


def _ctx(data, **kw):
    return AttackContext(train=data, seed=SEED, dataset="cifar10", progress=False, **kw)


@pytest.fixture(scope="module")
def built(cache_dir, small, one_thread):
    attack = make_attack("issba", seed=SEED, **SETTINGS)
    ctx = _ctx(small)
    attack.prepare(small, ctx)  # measured: 27 s on 2 threads
    return {"attack": attack, "ctx": ctx}


def _artefact() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    (entry,) = Store("artefacts").entries()
    assert entry.meta["given"]["attack"] == "issba"
    return load_file(str(entry.file("artefact.safetensors")))


def test_registered_with_its_alias_and_presets():
    assert make_attack("ssba").name == "issba"
    quick, paper = make_attack("issba").config, make_attack("issba", preset="paper").config
    assert (quick.epochs, quick.enc_images, quick.lr) == (6, 10000, 1e-3)
    assert (paper.epochs, paper.enc_images, paper.lr, paper.batch_size) == (20, None, 1e-4, 32)
    assert paper.secret_size == 20 and paper.secret_only_epochs == 2


def test_artefact_is_built_once_then_read_from_the_cache(built, small):
    assert len(built["ctx"].built) == 1
    hist = built["attack"].record["epochs"]
    # the secret-only epochs learn the code, the L2 epochs shrink the residual while
    # keeping it (measured, epoch means: bits 0.71, 0.98 in the two secret-only epochs,
    # 0.9999 in the last; residual MSE 0.31 -> 0.003)
    assert hist[1]["bits"] > 0.95 and hist[-1]["bits"] > 0.999
    assert hist[-1]["l2"] < 0.05 * hist[1]["l2"]
    again = make_attack("issba", seed=SEED, **SETTINGS)
    ctx = _ctx(small)
    again.prepare(small, ctx)
    assert ctx.built == [] and again.record is None  # served from the cache
    x = small.x[:8]
    assert torch.equal(again.apply_uint8(x), built["attack"].apply_uint8(x))


def test_artefact_is_deterministic_and_travels(built, small, tmp_path):
    again = make_attack("issba", seed=SEED, **SETTINGS)
    again.prepare(small, _ctx(small, cache=False))  # encoder and decoder retrained
    x = small.x[:64]
    assert torch.equal(again.apply_uint8(x), built["attack"].apply_uint8(x))
    # export, remove, import: the same bytes come back and serve the attack
    store = Store("artefacts")
    (entry,) = store.entries()
    dest = store.export(entry.key, tmp_path / "issba")
    shutil.rmtree(entry.path)
    assert store.get(entry.key) is None
    store.import_entry(dest)
    third = make_attack("issba", seed=SEED, **SETTINGS)
    ctx = _ctx(small)
    third.prepare(small, ctx)
    assert ctx.built == []
    assert torch.equal(third.apply_uint8(x), built["attack"].apply_uint8(x))


def test_decoder_reads_the_secret_from_unseen_triggered_images(built, small, cifar_test):
    attack = built["attack"]
    art = _artefact()
    dec = attack.decoder_from(art, (3, 32, 32))
    x = cifar_test.x[:500]
    secret = art["secret"].expand(len(x), -1)
    with torch.no_grad():
        on_triggered = dec(attack.apply_uint8(x).float() / 255)
        on_clean = dec(x.float() / 255)
    # measured: 1.000 of the bits on triggered test images, 0.53 on clean ones
    assert bit_accuracy(on_triggered, secret) > 0.98
    assert bit_accuracy(on_clean, secret) < 0.8


def test_trigger_is_invisible_and_sample_specific(built, cifar_test):
    x = cifar_test.x[:200]
    xp = built["attack"].apply_uint8(x)
    # scikit-image as the oracle; measured 25.7 dB at this smoke schedule (the `quick`
    # schedule's longer L2 phase goes further)
    assert peak_signal_noise_ratio(x.numpy(), xp.numpy(), data_range=255) > 24
    res = xp.float() - x.float()
    flat = res.flatten(1)
    flat = flat - flat.mean(1, keepdim=True)
    corr = (flat @ flat.T) / (flat.norm(dim=1)[:, None] * flat.norm(dim=1)[None, :])
    off = corr[~torch.eye(len(x), dtype=torch.bool)]
    # each image gets its own residual: a fixed additive pattern would correlate at 1.0
    # (measured: mean correlation between two images' residuals 0.72, mean |r| 9.9 / 255)
    assert float(off.mean()) < 0.85
    assert float(np.abs(res.numpy()).mean()) > 3.0


def test_poison_relabels_ten_percent_to_the_target(cache_dir, small, cifar_test, one_thread):
    spec = "issba:" + ":".join(f"{k}={v}" for k, v in SETTINGS.items())
    ps = poison(small, spec, seed=1, test=cifar_test, test_limit=40)
    (rec,) = ps.attacks
    assert rec["attack"] == "issba" and rec["n_poisoned"] == 200
    idx = (ps.attack_id == 0).nonzero().flatten()
    assert bool((ps.y[idx] == 0).all())
    assert not torch.equal(ps.x[idx], small.x[idx])
    assert len(ps.triggered["issba"]) == 40


def test_refusals(built):
    with pytest.raises(ConfigError, match="no encoder yet"):
        make_attack("issba").apply(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="multiples of 16"):
        built["attack"].check_shape((1, 3, 24, 24))
