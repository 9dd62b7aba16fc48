"""SampDetox: SSIM map, masked stage 2, equality with the per-pixel reference loop,
seeding and batch-size independence, settings checks (tiny random UNets on 8x8 images),
and independent oracles on real CIFAR-10 images: the SSIM map against scikit-image, the
trigger map against a per-pixel reference, the reverse step against diffusers'
``DDPMScheduler.step``."""

from __future__ import annotations

import math

import kornia
import numpy as np
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
from detox.defenses.purifiers.sampdetox_reference import reference_grey, reference_purify
from detox.diffusion import new_diffusion_model
from detox.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(schedule: str, continuous: bool = False, **kw):
    """An 8x8 random-init UNet (channels 16, 32) on ``schedule``; ``continuous`` marks it as
    trained on fractional levels."""
    m = new_diffusion_model(
        sample_size=8, block_out_channels=(16, 32), norm_num_groups=8, beta_schedule=schedule,
        **kw,
    )  # fmt: skip
    m.meta["continuous_time"] = continuous
    return m


@pytest.fixture(scope="module")
def tiny_cosine():
    return tiny_model("cosine")


@pytest.fixture(scope="module")
def tiny_linear():
    return tiny_model("linear", seed=1)


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


@pytest.fixture(scope="module")
def real_images(cifar_test_small):
    """Four real CIFAR-10 test images in [0, 1] (float64)."""
    return cifar_test_small.x[:4].double() / 255.0


def test_luma_weights_weigh_each_channel_as_documented(real_images):
    """Real 16x16 CIFAR-10 crops where stage 1 changed only the red channel in one patch
    and only the blue channel, by the same amount, in another; green is untouched. The
    map must equal the per-pixel reference (written from the formula, not from sampdetox's
    code) for the paper's weights, the code's and swapped ones, and the weights decide
    which patch looks more like a trigger."""
    x = real_images[:2, :, 8:24, 8:24].clone()
    xbar = x.clone()
    xbar[:, 0, 2:5, 2:5] = 1.0 - x[:, 0, 2:5, 2:5]  # red changed in patch A
    xbar[:, 2, 10:13, 10:13] = 1.0 - x[:, 2, 10:13, 10:13]  # blue changed in patch B
    a, b = (slice(None), 3, 3), (slice(None), 11, 11)
    paper = build_purifier("sampdetox", "paper").config
    code = build_purifier("sampdetox", "code").config
    swapped = build_purifier("sampdetox", "paper", luma_weights=(0.114, 0.587, 0.299)).config
    maps = {}
    for name, cfg in (("paper", paper), ("code", code), ("swapped", swapped)):
        grey = trigger_map(x, xbar, cfg)
        ref = np.stack([reference_grey(xi.numpy(), bi.numpy(), cfg) for xi, bi in zip(x, xbar)])
        np.testing.assert_allclose(grey.numpy(), ref, atol=1e-9, rtol=0)  # measured 4e-13
        maps[name] = grey
    # paper: R weighs 0.299 > B 0.114, so the red patch is the likelier trigger (lower map;
    # measured at the patch centres: red 0.10 / 0.00, blue 0.85 / 0.56)
    assert (maps["paper"][a] < maps["paper"][b]).all()
    # the code's weights (0.11 / 0.59 / 0.30) and swapped luma weights reverse the order
    assert (maps["code"][a] > maps["code"][b]).all()
    assert (maps["swapped"][a] > maps["swapped"][b]).all()
    assert (maps["paper"] - maps["swapped"]).abs().amax() > 0.1


def _skimage_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float) -> np.ndarray:
    from skimage.metrics import structural_similarity

    return np.stack(
        [
            structural_similarity(
                a.numpy(),
                b.numpy(),
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=data_range,
                full=True,
                channel_axis=0,
            )[1]
            for a, b in zip(x, y)
        ]
    )


@pytest.fixture(scope="module")
def stage1_pairs(real_images):
    """Real CIFAR-10 test images and their stage-1 restorations by the shipped CIFAR-10
    diffusion model (the pairs SampDetox compares)."""
    p = build_purifier("sampdetox", "smoke")
    p.use_dataset_defaults("cifar10")
    out = p.purify(real_images.float(), seed=0, return_intermediates=True)
    return real_images, out.stage1.double()


@pytest.mark.parametrize("preset", ["paper", "code"])
def test_ssim_map_matches_scikit_image(stage1_pairs, preset):
    """scikit-image's ``structural_similarity`` (Gaussian weights, sigma 1.5, population
    covariance, the preset's data_range: 1 for paper, 255 on [0, 1] images for the
    authors' code) is the oracle. Its padding is symmetric (scipy's "reflect"), detox's
    torch's reflect, so away from the border (the window radius, 5 px) the maps agree,
    and with the images padded symmetrically first they agree everywhere. Measured
    differences: 8.7e-13 (paper) and 4.4e-16 (code) with eps = 0 (as trigger_map calls
    it); 3.3e-8 with ``ssim_map``'s default eps = 1e-12 in the denominator (kornia's)."""
    x, y = stage1_pairs
    cfg = build_purifier("sampdetox", preset).config
    L = cfg.ssim_data_range
    ref = _skimage_ssim(x, y, L)
    r = 5
    inner = (slice(None), slice(None), slice(r, -r), slice(r, -r))
    exact = ssim_map(x, y, cfg.ssim_window, cfg.ssim_sigma, L, eps=0.0).numpy()
    np.testing.assert_allclose(exact[inner], ref[inner], atol=1e-10, rtol=0)
    ours = ssim_map(x, y, cfg.ssim_window, cfg.ssim_sigma, L).numpy()
    np.testing.assert_allclose(ours[inner], ref[inner], atol=1e-6, rtol=0)
    # in float32 (measured 3.8e-4 off: why trigger_map computes it in float64)
    ours32 = ssim_map(x.float(), y.float(), cfg.ssim_window, cfg.ssim_sigma, L).numpy()
    np.testing.assert_allclose(ours32[inner], ref[inner], atol=1e-3, rtol=0)
    # matching border handling: symmetric padding by the radius, then crop
    pad = [(0, 0), (0, 0), (r, r), (r, r)]
    xp = torch.from_numpy(np.pad(x.numpy(), pad, mode="symmetric"))
    yp = torch.from_numpy(np.pad(y.numpy(), pad, mode="symmetric"))
    full = ssim_map(xp, yp, cfg.ssim_window, cfg.ssim_sigma, L, eps=0.0).numpy()[inner]
    np.testing.assert_allclose(full, ref, atol=1e-10, rtol=0)
    # the maps are not trivially 1: stage 1 changed the images (measured 1 - min: 0.19
    # paper, 4.8e-5 code: data_range 255 squeezes the map towards 1)
    assert 1.0 - ref.min() > (0.1 if preset == "paper" else 2e-5)


class _FixedNoise:
    """Stands in for the noise streams: always the same draw; counts the draws."""

    def __init__(self, z: torch.Tensor) -> None:
        self.z, self.calls = z, 0

    def randn(self) -> torch.Tensor:
        self.calls += 1
        return self.z


@pytest.mark.parametrize(
    "preset,variance_type,clip", [("paper", "fixed_small", True), ("code", "fixed_large", False)]
)
def test_reverse_step_matches_diffusers_ddpm_step(real_images, preset, variance_type, clip):
    """SampDetox's ancestral step (posterior variance beta-tilde for paper = diffusers'
    "fixed_small", beta for code = "fixed_large"; x0 clipping as the preset says) against
    ``DDPMScheduler.step`` with the same model output (the shipped model's prediction),
    timestep, sample (real CIFAR-10 images in [-1, 1], noised to the level) and noise
    (the same seeded draw), at single steps and respaced ones (custom timesteps).

    The oracle runs in float64 (its betas, cumulative products and inputs): measured
    agreement 1.9e-7. Diffusers' own float32 cumulative product of the cosine betas costs
    it precision near t = 0 (1 - abar ~ 1e-4): 2.4e-5 against detox's float64 schedule."""
    from diffusers import DDPMScheduler

    from detox.diffusion import load_diffusion, packaged_diffusion

    model = load_diffusion(packaged_diffusion("cifar10"))
    p = build_purifier("sampdetox", preset, model=model, beta_schedule="any")
    assert (p.config.variance, p.config.clip_denoised) == (variance_type, clip)
    x0 = real_images.float() * 2.0 - 1.0
    for a, b in ((1, 0), (2, 1), (20, 19), (120, 119), (120, 100), (20, 15)):
        sched = DDPMScheduler(
            num_train_timesteps=1000,
            beta_schedule=model.scheduler.config["beta_schedule"],
            variance_type=variance_type,
            clip_sample=clip,
            prediction_type="epsilon",
        )
        if a - b > 1:  # respaced: the scheduler's previous timestep is b - 1
            sched.set_timesteps(timesteps=[a - 1, b - 1])
        sched32 = DDPMScheduler.from_config(sched.config)
        if a - b > 1:
            sched32.set_timesteps(timesteps=[a - 1, b - 1])
        sched.betas = sched.betas.double()
        sched.alphas = 1.0 - sched.betas
        sched.alphas_cumprod = torch.cumprod(sched.alphas, 0)
        sched.one = torch.tensor(1.0, dtype=torch.float64)
        ab = float(sched.alphas_cumprod[a - 1])
        g = torch.Generator().manual_seed(a)
        xa = math.sqrt(ab) * x0 + math.sqrt(1.0 - ab) * torch.randn(x0.shape, generator=g)
        with torch.inference_mode():
            eps = model.eps(xa, a - 1)
        seed = 100 + a
        z64 = torch.randn(
            x0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
        p._eps = lambda x, level, eps=eps, a=a: eps if level == a else None
        noise = _FixedNoise(z64.float())
        ours = p._step(xa, a, b, noise)
        assert noise.calls == (1 if b > 0 else 0)  # no noise on the last step
        want = sched.step(
            eps.double(), a - 1, xa.double(), generator=torch.Generator().manual_seed(seed)
        ).prev_sample
        torch.testing.assert_close(ours.double(), want, atol=1e-6, rtol=0)
        want32 = sched32.step(
            eps, a - 1, xa, generator=torch.Generator().manual_seed(seed)
        ).prev_sample
        z32 = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        ours32 = p._step(xa, a, b, _FixedNoise(z32))
        # diffusers' float32 path: 5.5e-5 measured on the linear schedule (its float32
        # cumulative product), 2.4e-5 on the cosine one
        torch.testing.assert_close(ours32, want32, atol=1e-4, rtol=0)
        assert (want - xa).abs().amax() > 0.01  # the step moved the sample


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
        ("paper", {"sampler": "ddim", "stride": 4}),
    ],
)
def test_vectorised_chain_equals_per_pixel_loop(tiny_cosine, images, preset, over):
    """The vectorised purifier against the independent per-pixel reference (float64
    Python loops from the specification; it shares only the noise streams and the UNet).
    Measured: levels identical, images within 2.4e-6, maps within 2.2e-6."""
    p = build_purifier("sampdetox", preset, model=tiny_cosine, t1=6, T2=12, **over)
    fast = p.purify(images[:2], seed=3, start_index=5, return_intermediates=True)
    slow = reference_purify(p, images[:2], seed=3, start_index=5)
    torch.testing.assert_close(fast.stage1, slow.stage1, atol=1e-6, rtol=0)
    torch.testing.assert_close(fast.grey, slow.grey, atol=2e-5, rtol=0)
    assert torch.equal(fast.t2, slow.t2)
    assert 0 < int((fast.t2 > 0).sum()) < fast.t2.numel()  # a real mask: some pixels, not all
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
    short = tiny_model("cosine", t_max=60)
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


@pytest.fixture(scope="module")
def tiny_continuous():
    """A linear-schedule model marked as trained on continuous levels (0, 150]."""
    return tiny_model("linear", t_max=150, seed=2, continuous=True)


@pytest.mark.parametrize("preset,over", [("paper", {}), ("code", {}), ("paper", {"stride": 4})])
def test_continuous_model_runs_the_presets_schedule(tiny_continuous, images, preset, over):
    """A continuous-time model runs each preset's chain on the preset's own schedule (the
    paper's cosine, the code's linear), the network asked at the fractional timestep of its
    (linear) schedule with the same noise amount. Oracle for the schedules: diffusers'
    DDPMScheduler betas; for the timesteps: numpy's interpolation of log abar. The
    vectorised chain equals the per-pixel reference on the same model."""
    from diffusers import DDPMScheduler

    p = build_purifier("sampdetox", preset, model=tiny_continuous, t1=6, T2=12, **over)
    assert not p.warnings  # no schedule mismatch: the chain follows the settings
    name = {"cosine": "squaredcos_cap_v2"}.get(p.config.beta_schedule, p.config.beta_schedule)
    want = np.concatenate(
        [[1.0], np.cumprod(1.0 - DDPMScheduler(beta_schedule=name).betas.double().numpy())]
    )
    np.testing.assert_allclose(p._abar.numpy(), want, rtol=1e-6)
    lin = np.concatenate(
        [[1.0], np.cumprod(1.0 - DDPMScheduler(beta_schedule="linear").betas.double().numpy())]
    )
    levels = np.arange(13)
    ts = np.interp(-np.log(want[levels]), -np.log(lin), np.arange(len(lin))) - 1.0
    np.testing.assert_allclose(p._timesteps.numpy(), ts, atol=1e-5)
    if preset == "code":  # same schedule as the model: integer timesteps level - 1
        np.testing.assert_allclose(p._timesteps.numpy(), levels - 1.0, atol=1e-6)
    else:  # cosine level 12 carries the noise of linear level 5.59 (timestep 4.59)
        assert 4.5 < float(p._timesteps[12]) < 4.7
    fast = p.purify(images[:2], seed=3, return_intermediates=True)
    slow = reference_purify(p, images[:2], seed=3)
    assert torch.equal(fast.t2, slow.t2)
    torch.testing.assert_close(fast.x, slow.x, atol=1e-5, rtol=0)


def test_continuous_model_refuses_noise_beyond_its_range(images):
    """Levels are checked by noise amount: a model trained up to linear level 70 serves the
    paper's cosine T2 = 120 (the noise of linear level ~59) but not the code's linear 120."""
    m = tiny_model("linear", t_max=70, continuous=True)
    build_purifier("sampdetox", "paper", model=m)
    with pytest.raises(ConfigError, match="noisier than the diffusion model"):
        build_purifier("sampdetox", "code", model=m)
    # beta_schedule=any: the model's own schedule, integer timesteps, t_max in levels
    q = build_purifier("sampdetox", "paper", model=m, beta_schedule="any", T2=70)
    assert q._timesteps is None
