"""BDMAE and detox's small MAE, on real CIFAR-10 at smoke scale.

The MAE: restoring keeps the visible pixels bit for bit, an image's restoration does not
depend on the other images of its batch, training lowers the loss on real images, the
folder format round-trips, the shipped CIFAR-10 model restores better than a flat fill.
The purifier: deterministic for a seed, independent of the batch size and of where a batch
starts, lowers the planted BadNets victim's attack success rate with the shipped MAE, keys
its cache by the MAE's weights (not its path), and refuses bad settings by name.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from detox.attacks import make_attack
from detox.config import make_config
from detox.data.base import to_float
from detox.defenses.context import DefenseContext
from detox.defenses.purifiers import build_purifier, purify_all
from detox.errors import ConfigError
from detox.mae import MAE, MAEConfig, MAETrainConfig, load_mae, packaged_mae, save_mae, train_mae
from detox.training import predict
from detox.utils.fingerprint import state_fingerprint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shipped():
    path = packaged_mae("cifar10")
    assert path is not None, "the CIFAR-10 MAE is package data (src/detox/weights/mae-cifar10-32)"
    return path


@pytest.fixture(scope="module")
def triggered(cifar_test):
    """100 CIFAR-10 test images of classes other than the target 0, with BadNets' patch."""
    idx = torch.nonzero(cifar_test.y != 0).flatten()[:100]
    return make_attack("badnets").apply_uint8(cifar_test.x[idx])


def _bdmae(planted, preset="smoke", **over):
    p = build_purifier("bdmae", preset, **over)
    p.use_dataset_defaults("cifar10")
    model = planted["model"].eval()
    return p.prepare(DefenseContext(model=model, model_fingerprint=state_fingerprint(model)))


# -- the MAE -------------------------------------------------------------------------------
def test_restore_keeps_visible_pixels(cifar_small):
    mae = MAE(make_config(MAEConfig, "smoke"), seed=0).eval()
    x = to_float(cifar_small.x[:6])
    g = torch.Generator().manual_seed(0)
    mask = mae.random_mask(6, 0.75, g)
    mask[1] = False
    mask[1, :5] = True  # rows hide different numbers of tokens: the padded path
    mask[2] = True
    mask[2, 7] = False  # a single visible token
    out = mae.restore(x, mask)
    hidden = mae.pixel_mask(mask).expand_as(x)
    assert torch.equal(out[~hidden], x[~hidden])
    assert out.min() >= 0 and out.max() <= 1 and not torch.equal(out[hidden], x[hidden])
    # an image's restoration does not depend on the rest of the batch
    for r in (1, 2, 4):
        alone = mae.restore(x[r : r + 1], mask[r : r + 1])
        torch.testing.assert_close(alone, out[r : r + 1], atol=1e-5, rtol=0)
    # an empty mask restores nothing; a mask hiding everything is refused
    assert torch.equal(mae.restore(x[:2], torch.zeros(2, mae.num_tokens, dtype=torch.bool)), x[:2])
    with pytest.raises(ConfigError, match="hides every token"):
        mae.restore(x[:1], torch.ones(1, mae.num_tokens, dtype=torch.bool))
    # patchify / unpatchify are inverse
    assert torch.equal(mae.unpatchify(mae.patchify(x)), x)


def test_training_lowers_loss_and_folder_round_trips(cifar_small, tmp_path):
    cfg = make_config(MAETrainConfig, "smoke", steps=40, batch_size=32, progress=False)
    mcfg = make_config(MAEConfig, "smoke")
    model, rec = train_mae(cfg, mcfg, out=tmp_path / "m", data=cifar_small.x)
    losses = [e["loss"] for e in rec["losses"]]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)  # measured: 0.80 -> 0.11
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["model"]["dim"] == 32 and meta["train"]["data"]["images"] == len(cifar_small.x)
    assert {"wall_time_s", "device", "losses", "settings"} <= set(meta["train"])
    assert not (tmp_path / "m" / "checkpoint").exists()
    back = load_mae(tmp_path / "m")
    x = to_float(cifar_small.x[:4])
    mask = back.random_mask(4, 0.75, torch.Generator().manual_seed(1))
    torch.testing.assert_close(back.restore(x, mask), model.restore(x, mask), atol=2e-2, rtol=0)
    with pytest.raises(ConfigError, match="model.safetensors"):
        load_mae(tmp_path)


def test_shipped_mae_restores(shipped, cifar_test):
    import os

    assert os.path.getsize(os.path.join(shipped, "model.safetensors")) <= 20 * 2**20
    mae = load_mae(shipped)
    x = to_float(cifar_test.x[:64])
    mask = mae.random_mask(64, 0.75, torch.Generator().manual_seed(0))
    hidden = mae.pixel_mask(mask).expand_as(x)
    err = (mae.restore(x, mask) - x)[hidden].pow(2).mean()
    flat = x.mean((2, 3), keepdim=True).expand_as(x)  # fill with each image's mean colour
    base = (flat - x)[hidden].pow(2).mean()
    assert err < 0.6 * base, (float(err), float(base))  # measured: 0.0238 vs 0.0463


# -- the purifier --------------------------------------------------------------------------
def test_deterministic_and_batch_size_independent(planted, triggered, shipped):
    p = _bdmae(planted)
    x = to_float(triggered[:8])
    a = p.purify(x, seed=3)
    assert torch.equal(a, p.purify(x, seed=3))
    torch.testing.assert_close(p.purify(x, seed=3, batch_size=3), a, atol=1e-5, rtol=0)
    torch.testing.assert_close(p.purify(x[2:], seed=3, start_index=2), a[2:], atol=1e-5, rtol=0)
    out = p.purify(x, seed=3, return_intermediates=True)
    torch.testing.assert_close(out.x, a, atol=0, rtol=0)
    assert out.mask.shape == (8, 8, 8) and out.mask.float().mean() < 0.25
    # what it leaves unmasked is the input, exactly
    keep = ~load_mae(shipped).pixel_mask(out.mask.flatten(1)).expand_as(x)
    assert torch.equal(a[keep], x[keep])
    d = p.describe()
    assert d["mae_restorations_per_image"] == 4 + 4 + 3 and d["victim_queries_per_image"] == 9


def test_lowers_badnets_asr(planted, triggered, cifar_test_small):
    """Measured (shipped MAE, ``smoke`` preset, seed 0, one thread): on these 100 triggered
    test images ASR 1.00 -> 0.02 (the fixture's undefended ASR: 0.995); clean accuracy on
    the 300 test images 0.497 -> 0.423. Asserted: ASR at least 0.6 below the undefended
    model's on both counts, clean accuracy within 0.15."""
    model = planted["model"].eval()
    asr_before = float((predict(model, triggered) == 0).float().mean())
    assert asr_before >= 0.9 and planted["asr"] >= 0.9
    p = _bdmae(planted)
    purified = purify_all(p, triggered, batch_size=50, device="cpu", progress=False, seed=0)
    asr_after = float((predict(model, purified) == 0).float().mean())
    assert asr_after <= min(asr_before, planted["asr"]) - 0.6, (asr_before, asr_after)
    x, y = cifar_test_small.x, cifar_test_small.y
    ca_before = float((predict(model, x) == y).float().mean())
    clean = purify_all(p, x, batch_size=100, device="cpu", progress=False, seed=0)
    ca_after = float((predict(model, clean) == y).float().mean())
    assert ca_after >= ca_before - 0.15, (ca_before, ca_after)


def test_cache_key_follows_weights_not_path(planted, shipped, tmp_path):
    p = _bdmae(planted)
    f = p.fingerprint()
    copy = tmp_path / "mae"
    shutil.copytree(shipped, copy)
    assert _bdmae(planted, mae=str(copy)).fingerprint() == f
    other = MAE(load_mae(shipped).config, seed=5)
    save_mae(other, tmp_path / "other")
    assert _bdmae(planted, mae=str(tmp_path / "other")).fingerprint() != f
    assert _bdmae(planted, outer=2).fingerprint() != f
    assert p.config.mae == shipped  # the path is restored after fingerprinting


def test_bad_settings_raise(planted, tmp_path):
    with pytest.raises(ConfigError, match="restore_thresholds"):
        build_purifier("bdmae", restore_thresholds=(0.4, 0.6))
    with pytest.raises(ConfigError, match="mask_ratio"):
        build_purifier("bdmae", mask_ratio=1.5)
    with pytest.raises(ConfigError, match="outer"):
        build_purifier("bdmae", outer=0)
    with pytest.raises(ConfigError, match="needs the victim"):
        build_purifier("bdmae").prepare(DefenseContext())
    p = build_purifier("bdmae")  # no MAE and no dataset default
    p.prepare(DefenseContext(model=planted["model"], model_fingerprint="f"))
    with pytest.raises(ConfigError, match="mae="):
        p.purify(torch.rand(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="MAE 'nowhere'"):
        build_purifier("bdmae", mae="nowhere").prepare(
            DefenseContext(model=planted["model"], model_fingerprint="f")
        ).purify(torch.rand(1, 3, 32, 32))
