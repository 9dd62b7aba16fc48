"""ZIP (Shi et al. 2023) on real CIFAR-10 with the shipped diffusion model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detox.defenses.purifiers import build_purifier, purify_all
from detox.defenses.purifiers.zip import _gray, _pool
from detox.errors import ConfigError


def zip_purifier(preset="smoke", **kw):
    return build_purifier("zip", preset, **kw).use_dataset_defaults("cifar10")


def test_projections_match_numpy_block_and_channel_means():
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = x.numpy()
    blocks = a.reshape(2, 3, 8, 4, 8, 4).mean(axis=(3, 5))
    np.testing.assert_allclose(
        _pool(x, 4).numpy(), blocks.repeat(4, axis=2).repeat(4, axis=3), atol=1e-6
    )
    np.testing.assert_allclose(
        _gray(x).numpy(), np.broadcast_to(a.mean(1, keepdims=True), a.shape), atol=1e-6
    )
    for p in (lambda t: _pool(t, 4), _gray):  # projections: P(P x) = P x
        torch.testing.assert_close(p(p(x)), p(x))


def test_degradations_follow_the_dataset():
    assert zip_purifier().resolved_degradations() == ("gray", "pool")
    gtsrb = build_purifier("zip", "smoke").use_dataset_defaults("gtsrb")
    assert gtsrb.resolved_degradations() == ("pool",)


def test_seeded_and_batch_independent(cifar_test, one_thread):
    x = cifar_test.x[:6]
    p = zip_purifier()
    xf = x.float() / 255
    a = p.purify(xf, seed=0)
    assert torch.equal(a, p.purify(xf, seed=0))
    # image k gets the noise of position k: another batching differs only by float
    # rounding in the UNet's convolutions
    torch.testing.assert_close(a, p.purify(xf, seed=0, batch_size=4), atol=1e-5, rtol=0)
    assert (a - p.purify(xf, seed=1)).abs().mean() > 0.01
    u1 = purify_all(p, x, device="cpu", progress=False, seed=0)
    u2 = purify_all(p, x, batch_size=4, device="cpu", progress=False, seed=0)
    assert (u1.int() - u2.int()).abs().max() <= 1


def test_full_guidance_keeps_the_degraded_image(cifar_test, one_thread):
    """DDNM's consistency: with the guidance never fading (``abar^power`` ~ 0 at every
    level) the last step's ``x0`` has exactly the input's range-space part, so pooling the
    output gives the pooled input (up to uint8 rounding and clipping)."""
    x = cifar_test.x[:4]
    p = zip_purifier(degradations="pool", guidance_power=1e6)
    out = purify_all(p, x, device="cpu", progress=False, seed=0).float() / 255
    want = _pool(x.float() / 255, 4)
    assert (_pool(out, 4) - want).abs().max() < 3 / 255
    assert (out - x.float() / 255).abs().mean() > 0.01  # the rest is regenerated


def test_lowers_badnets_asr_on_the_planted_victim(planted, cifar_test, one_thread):
    """Measured (smoke preset: 5 steps from level 150, gray + pool 4, seed 0; 60 triggered
    test images): ASR 1.00 undefended -> 0.48. The quick preset (10 steps) leaves it at
    1.00: the gray degradation keeps the patch's luminance at full resolution, and the
    guidance (1 - abar^10) holds the chain to it (docs/results.md)."""
    from detox.attacks import make_attack
    from detox.training import predict

    model = planted["model"].eval()
    other = torch.nonzero(cifar_test.y != 0).flatten()[:60]
    xp = make_attack("badnets").apply_uint8(cifar_test.x[other])
    undefended = float((predict(model, xp) == 0).float().mean())
    purified = purify_all(zip_purifier(), xp, device="cpu", progress=False, seed=0)
    asr = float((predict(model, purified) == 0).float().mean())
    assert undefended >= 0.95
    assert asr <= 0.75, asr


@pytest.mark.parametrize(
    ("setting", "message"),
    [({"degradations": "blur"}, "degradations"), ({"pool": 1}, "pool")],
)
def test_bad_settings(setting, message):
    with pytest.raises(ConfigError, match=message):
        build_purifier("zip", "smoke", **setting)


def test_pool_must_divide_the_image(cifar_test):
    p = zip_purifier(degradations="pool", pool=3)
    with pytest.raises(ConfigError, match="pool=3"):
        purify_all(p, cifar_test.x[:2], device="cpu", progress=False)
