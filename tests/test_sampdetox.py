"""SampDetox: SSIM map, masked stage 2, equality with the per-pixel reference loop,
seeding and batch-size independence, settings checks. Tiny random UNets on 8x8 images."""

from __future__ import annotations

import kornia
import pytest
import torch

from detox.defenses.purifiers import (
    PURIFIERS,
    SampDetox,
    build_purifier,
    purify_all,
    ssim_map,
)
from detox.defenses.purifiers.sampdetox import level_grid, snap_up, trigger_map
from detox.defenses.purifiers.sampdetox_reference import reference_purify
from detox.diffusion import new_diffusion_model
from detox.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_cosine():
    return new_diffusion_model(
        sample_size=8, block_out_channels=(16, 32), norm_num_groups=8, beta_schedule="cosine"
    )


@pytest.fixture(scope="module")
def tiny_linear():
    return new_diffusion_model(
        sample_size=8,
        block_out_channels=(16, 32),
        norm_num_groups=8,
        beta_schedule="linear",
        seed=1,
    )


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 8, 8, generator=g)
    x[0, :, 2:5, 2:5] = 1.0  # a bright patch, like a BadNets trigger
    return x


def test_registry_and_presets():
    assert "sampdetox" in PURIFIERS.names()
    for preset in ("paper", "code", "quick", "smoke"):
        p = build_purifier("sampdetox", preset)
        assert isinstance(p, SampDetox)
    code = build_purifier("sampdetox", "code").config
    assert (code.t1, code.T2, code.beta_schedule) == (120, 120, "linear")
    assert code.luma_weights == (0.11, 0.59, 0.30) and code.ssim_data_range == 255.0
    paper = build_purifier("sampdetox", "paper").config
    assert (paper.t1, paper.T2, paper.beta_schedule) == (20, 120, "cosine")
    with pytest.raises(ConfigError, match="preset"):
        build_purifier("sampdetox", "nope")
    with pytest.raises(ConfigError, match="valid settings"):
        build_purifier("sampdetox", "paper", t3=5)
    with pytest.raises(ConfigError, match="diffusion model"):
        build_purifier("sampdetox").purify(torch.rand(1, 3, 8, 8))


@pytest.mark.parametrize("data_range", [1.0, 255.0])
@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_map_matches_kornia(data_range, channels):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, channels, 16, 12, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    ours = ssim_map(x, y, 11, 1.5, data_range)
    ref = kornia.metrics.ssim(x, y, 11, max_val=data_range)
    assert ours.shape == ref.shape == x.shape
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


def test_trigger_map_normalised_and_luma(images):
    cfg = build_purifier("sampdetox", "paper").config
    xbar = images.clone()
    xbar[0, :, 2:5, 2:5] = 0.3  # stage 1 "removed" the patch
    grey = trigger_map(images, xbar, cfg)
    assert grey.shape == (3, 8, 8)
    assert grey[0].amin() == 0.0 and grey[0].amax() == 1.0
    # the changed patch is where the map is lowest
    assert grey[0, 3, 3] < grey[0, 7, 7]
    # identical images: constant map -> grey 1 (t2 = 0, stage 2 leaves them alone)
    assert torch.equal(grey[1:], torch.ones(2, 8, 8))


def test_level_grid_and_snap():
    assert level_grid(5, 1) == [5, 4, 3, 2, 1, 0]
    assert level_grid(0, 3) == [0]
    g = level_grid(120, 7)
    assert g[0] == 120 and g[-1] == 0 and len(g) - 1 == 18
    assert max(a - b for a, b in zip(g, g[1:])) <= 7
    lv = torch.arange(0, 121)
    s = snap_up(lv, g)
    assert (s >= lv).all() and set(s.tolist()) <= set(g)
    assert torch.equal(snap_up(lv, level_grid(120, 1)), lv)


def test_stage2_leaves_t2_zero_pixels_unchanged(tiny_cosine, images):
    p = build_purifier("sampdetox", "paper", model=tiny_cosine, t1=6, T2=12)
    out = p.purify(images, return_intermediates=True)
    zero = (out.t2 == 0).unsqueeze(1).expand_as(out.x)
    assert zero.any() and (~zero).any()
    assert torch.equal(out.x[zero], out.stage1[zero])
    assert (out.x[~zero] != out.stage1[~zero]).float().mean() > 0.9
    assert out.x.shape == images.shape and out.x.min() >= 0 and out.x.max() <= 1
    # T2 = 0: stage 2 does nothing; t1 = T2 = 0: identity
    s1 = build_purifier("sampdetox", "paper", model=tiny_cosine, t1=6, T2=0)
    o1 = s1.purify(images, return_intermediates=True)
    assert torch.equal(o1.x, o1.stage1) and torch.equal(o1.stage1, out.stage1)
    ident = build_purifier("sampdetox", "paper", model=tiny_cosine, t1=0, T2=0)
    torch.testing.assert_close(ident.purify(images), images, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "preset,over",
    [
        ("paper", {}),
        ("code", {"beta_schedule": "any"}),
        ("paper", {"stride": 3}),
        ("code", {"beta_schedule": "any", "shared_noise": True, "stride": 5}),
    ],
)
def test_vectorised_chain_equals_per_pixel_loop(tiny_cosine, images, preset, over):
    p = build_purifier("sampdetox", preset, model=tiny_cosine, t1=6, T2=12, **over)
    fast = p.purify(images[:2], seed=3, start_index=5, return_intermediates=True)
    slow = reference_purify(p, images[:2], seed=3, start_index=5)
    assert torch.equal(fast.t2, slow.t2)
    torch.testing.assert_close(fast.x, slow.x, atol=1e-5, rtol=0)


def test_seeded_and_batch_size_independent(tiny_cosine, images):
    p = build_purifier("sampdetox", "paper", model=tiny_cosine, t1=6, T2=12, stride=2)
    a = p.purify(images, seed=7)
    b = p.purify(images, seed=7)
    assert torch.equal(a, b)
    assert not torch.allclose(a, p.purify(images, seed=8))
    c = p.purify(images, seed=7, batch_size=1)
    torch.testing.assert_close(a, c, atol=1e-5, rtol=0)
    # image k gets the noise of position k: purifying a slice with its offset agrees
    d = p.purify(images[1:], seed=7, start_index=1)
    torch.testing.assert_close(a[1:], d, atol=1e-5, rtol=0)
    # uint8 helper with different batch sizes
    xu = (images * 255).round().to(torch.uint8)
    u1 = purify_all(p, xu, batch_size=2, device="cpu", progress=False, seed=7)
    u2 = purify_all(p, xu, batch_size=3, device="cpu", progress=False, seed=7)
    assert u1.dtype == torch.uint8 and u1.shape == xu.shape
    assert (u1.int() - u2.int()).abs().max() <= 1


def test_model_checks(tiny_cosine, tiny_linear, images):
    # schedule mismatch: the model's schedule is used, a warning is recorded
    with pytest.warns(UserWarning, match="schedule"):
        p = build_purifier("sampdetox", "paper", model=tiny_linear, t1=4, T2=8, stride=4)
    assert p.warnings and "linear" in p.warnings[0]
    assert p.purify(images[:1]).shape == (1, 3, 8, 8)
    # no warning with beta_schedule=any
    q = build_purifier("sampdetox", "paper", model=tiny_linear, beta_schedule="any")
    assert not q.warnings
    # a model trained on [0, t_max) refuses higher levels
    short = new_diffusion_model(
        sample_size=8,
        block_out_channels=(16, 32),
        norm_num_groups=8,
        beta_schedule="cosine",
        t_max=60,
    )
    with pytest.raises(ConfigError, match="t_max|trained on timesteps"):
        build_purifier("sampdetox", "paper", model=short)
    build_purifier("sampdetox", "paper", model=short, T2=60)
    with pytest.raises(ConfigError, match="channels"):
        build_purifier("sampdetox", "paper", model=tiny_cosine, T2=4).purify(torch.rand(1, 1, 8, 8))


def test_purified_cache(tiny_cosine, tiny_linear, images, tmp_path, monkeypatch):
    """purify_all(cache=True): the second call reads the cache; the key follows the seed,
    the settings and the weights, not the batch size or where the weights came from."""
    monkeypatch.setenv("DETOX_CACHE", str(tmp_path))
    xu = (images * 255).round().to(torch.uint8)
    p = build_purifier("sampdetox", "paper", model=tiny_cosine, t1=6, T2=12, stride=2)
    kw = {"device": "cpu", "progress": False, "seed": 3}
    a = purify_all(p, xu, cache=True, **kw)
    assert p.cached_images == 0 and len(list((tmp_path / "purified").iterdir())) == 1
    b = purify_all(p, xu, cache=True, batch_size=1, **kw)
    assert p.cached_images == len(xu) and torch.equal(a, b)
    assert torch.equal(a, purify_all(p, xu, **kw))  # same as uncached
    # another seed, another setting, other weights: new entries
    purify_all(p, xu, cache=True, device="cpu", progress=False, seed=4)
    q = build_purifier("sampdetox", "paper", model=tiny_cosine, t1=6, T2=12, stride=3)
    purify_all(q, xu, cache=True, **kw)
    with pytest.warns(UserWarning, match="schedule"):
        r = build_purifier("sampdetox", "paper", model=tiny_linear, t1=6, T2=12, stride=2)
    purify_all(r, xu, cache=True, **kw)
    assert q.cached_images == 0 and r.cached_images == 0
    assert len(list((tmp_path / "purified").iterdir())) == 4
