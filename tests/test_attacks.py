"""Attacks: triggers, target maps, specs, suites, poisoning, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from detox.attacks import (
    ATTACKS,
    SUITES,
    AttackSpec,
    TargetMap,
    attack_from_record,
    attack_params,
    make_attack,
    parse_attacks,
    poison,
    poison_count,
)
from detox.data import ImageDataset, PoisonedSet
from detox.errors import ConfigError

ALL = ATTACKS.names()
#: attacks whose trigger exists before :meth:`prepare` (learned attacks build theirs from a
#: training set and a surrogate: tests/test_lf.py, tests/test_narcissus.py)
FIXED = [n for n in ALL if not ATTACKS.get(n).learned]


def _batch(b=6, c=3, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g) * 0.8 + 0.1


def _synthetic(n_per_class, h=32, c=3, seed=0, name="synthetic"):
    """uint8 dataset with ``n_per_class[k]`` random images of class k."""
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((n,), k, dtype=torch.int64) for k, n in enumerate(n_per_class)])
    x = torch.randint(0, 256, (len(y), c, h, h), generator=g, dtype=torch.uint8)
    return ImageDataset(x, y, [f"c{k}" for k in range(len(n_per_class))], name)


def _attack(name, seed=0, size=32, **kw):
    a = make_attack(name, seed=seed, **kw)
    if name == "refool":
        a.prepare(_synthetic([10] * 4, h=size, seed=seed))
    return a


# -- every attack ------------------------------------------------------------------------
def test_registry_lists_the_attacks():
    expected = {
        "badnets",
        "blended",
        "sig",
        "wanet",
        "bpp",
        "refool",
        "frequency",
        "patch",
        "single-pixel",
        "blend-random",
        "blend-pattern",
        "sinusoid",
    }
    assert expected <= set(ALL)
    assert {"badloss-cifar10", "badloss-gtsrb", "badloss-imagenet"} <= set(SUITES.names())
    assert ATTACKS.get("ftrojan") is ATTACKS.get("frequency")
    with pytest.raises(ConfigError, match="badnets"):
        make_attack("nope")


@pytest.mark.parametrize("name", FIXED)
@pytest.mark.parametrize("size", [32, 64])
def test_attack_deterministic_shape_range(name, size):
    x = _batch(h=size, w=size)
    x0 = x.clone()
    y = torch.arange(6) % 3 + 1
    a1, a2 = _attack(name, seed=7, size=size), _attack(name, seed=7, size=size)
    xp1, yp1 = a1.apply(x, y)
    xp2, yp2 = a2.apply(x, y)
    assert torch.equal(x, x0), "apply must not modify its input"
    assert xp1.shape == x.shape and xp1.dtype == x.dtype
    assert float(xp1.min()) >= 0.0 and float(xp1.max()) <= 1.0
    assert torch.equal(xp1, xp2) and torch.equal(yp1, yp2)
    assert not torch.equal(xp1, x), "the trigger must change the images"
    assert torch.equal(a1.apply(x, y)[0], xp1), "repeated calls give the same result"
    if a1.label_mode == "clean":
        assert torch.equal(yp1, y)
    else:
        assert torch.equal(yp1, torch.zeros_like(y))  # default: all-to-one, target 0
    x64 = x.double()
    assert a1.apply(x64)[0].dtype == torch.float64
    # uint8 path agrees with the float path up to rounding
    xu = (x * 255).round().to(torch.uint8)
    out_u = a1.apply_uint8(xu)
    ref = (a1.apply(xu.float() / 255, None)[0] * 255).round()
    assert out_u.dtype == torch.uint8 and (out_u.float() - ref).abs().max() <= 1


@pytest.mark.parametrize("name", ["blended", "blend-random", "wanet"])
def test_seeded_patterns_differ_between_seeds(name):
    x = _batch()
    assert not torch.equal(_attack(name, seed=1).apply(x)[0], _attack(name, seed=2).apply(x)[0])


def test_param_table_has_units_and_sources():
    for name in ALL:
        rows = attack_params(name)
        assert rows[0]["name"] == "ratio" and rows[1]["name"] == "target"
        for r in rows[2:]:
            assert r["source"], f"{name}.{r['name']} has no source"


# -- individual triggers -----------------------------------------------------------------
def test_badnets_changes_only_the_corner():
    x = _batch(b=4)
    xp, _ = make_attack("badnets").apply(x)
    changed = (xp != x).any(dim=(0, 1))
    assert not changed[:-3, :].any() and not changed[:, :-3].any()
    # UltraClean's badNets_generation.py, pixel by pixel (row, col) -> value on every
    # channel; SampDetox's released poisoned images carry the same 0/255 block
    ultraclean = {
        (31, 30): 1, (30, 31): 1, (30, 29): 1, (29, 30): 1,
        (29, 31): 0, (31, 31): 0, (31, 29): 0, (30, 30): 0, (29, 29): 0,
    }  # fmt: skip
    for (r, c), v in ultraclean.items():
        assert torch.all(xp[:, :, r, c] == v), (r, c)


def test_badnets_backdoorbench_preset_is_a_white_square():
    x = _batch(b=2)
    xp, _ = make_attack("badnets", preset="backdoorbench").apply(x)
    assert torch.all(xp[:, :, -3:, -3:] == 1)
    assert torch.equal(xp[:, :, :-3], x[:, :, :-3]) and torch.equal(xp[..., :-3], x[..., :-3])
    with pytest.raises(ConfigError, match="presets: backdoorbench, sampdetox, ultraclean"):
        make_attack("badnets", preset="nope")


def test_poison_writes_the_grid_on_real_cifar(cifar_small):
    ps = poison(cifar_small, "badnets", seed=0)
    idx = (ps.attack_id == 0).nonzero().flatten()
    block = ps.x[idx][:, :, -3:, -3:]
    want = torch.tensor([[0, 255, 0], [255, 0, 255], [0, 255, 0]], dtype=torch.uint8)
    assert torch.equal(block, want.expand_as(block))


def test_sig_backdoorbench_and_ultraclean_presets(cifar_small):
    # BackdoorBench: delta 40, f 6 (utils/bd_img_transform/sig.py, the formula by hand)
    x = torch.full((1, 3, 32, 32), 0.5)
    xp, _ = make_attack("sig").apply(x)
    j = torch.arange(32, dtype=torch.float64)
    want = (0.5 + 40 / 255 * torch.sin(2 * torch.pi * j * 6 / 32)).float()
    assert torch.allclose(xp[0, 1, 7], want, atol=1e-6)
    # BackdoorBench's count: 10% of the whole training set (600 -> 60), from the target
    # class (all 60 of class 0 here); UltraClean: 30% of the target class (60 -> 18)
    ps = poison(cifar_small, "sig", seed=0)
    assert ps.attacks[0]["n_poisoned"] == 60 and ps.attacks[0]["ratio_of"] == "train"
    assert bool((ps.y_true[ps.attack_id == 0] == 0).all())
    ps = poison(cifar_small, "sig:preset=ultraclean", seed=0)
    rec = ps.attacks[0]
    assert (rec["n_poisoned"], rec["ratio_of"], rec["params"]["delta"]) == (
        18,
        "target_class",
        20.0,
    )
    assert rec["preset"] == "ultraclean"
    with pytest.raises(ConfigError, match="needs 120 examples"):
        poison(cifar_small, "sig:ratio=0.2")  # 120 > the 60 images of class 0


def test_single_pixel_sets_exactly_one_pixel():
    x = torch.zeros(2, 3, 32, 32)
    xp, _ = make_attack("single-pixel").apply(x)
    assert int((xp != x).any(dim=1).sum()) == 2  # one pixel per image
    assert torch.all(xp[:, :, 30, 30] == 1)


def test_patch_sets_its_four_pixels_and_large_squares():
    x = torch.zeros(2, 3, 32, 32)
    xp, _ = make_attack("patch").apply(x)
    on = xp[0, 0].nonzero().tolist()
    assert sorted(on) == sorted([[30, 30], [28, 30], [30, 28], [29, 29]])
    assert torch.equal(xp[:, 0], xp[:, 2])
    big = make_attack("patch").apply(torch.zeros(1, 3, 64, 64))[0]
    assert int(big[0, 0].sum()) == 4 * 8 * 8
    assert torch.all(big[0, :, 48:56, 48:56] == 1) and torch.all(big[0, :, 32:40, 48:56] == 1)


@pytest.mark.parametrize(
    ("name", "alpha", "alpha_large"),
    [("blend-random", 0.075, 0.15), ("blend-pattern", 0.025, 0.15), ("sinusoid", 0.075, 0.15)],
)
def test_badloss_blends_follow_the_formula(name, alpha, alpha_large):
    a = make_attack(name, seed=3)
    for size, al in ((32, alpha), (64, alpha_large)):
        x = torch.zeros(1, 3, size, size)
        p = a.apply(x)[0]  # = alpha * P (clamped), so P = p / alpha
        pat = p / al
        if name == "blend-pattern":
            expected = torch.zeros(size, size)
            expected[::2, ::2] = 1
            assert torch.allclose(pat[0, 0], expected, atol=1e-5)
        elif name == "sinusoid":
            col = torch.arange(size, dtype=torch.float64)
            expected = (1 - torch.cos(2 * math.pi * col * 6 / size)).float()
            assert torch.allclose(pat[0, 1, 5], expected, atol=1e-5)
        else:
            assert torch.allclose(pat * 255, (pat * 255).round(), atol=1e-3)  # 8-bit noise
            assert not torch.equal(pat[0, 0], pat[0, 1])
        assert a.effective_params((3, size, size))["alpha"] == al


def test_frequency_equals_the_dct_pipeline_and_adds_the_magnitude():
    from detox.attacks.frequency import frequency_pipeline
    from detox.attacks.ops import block_dct, dct_matrix, rgb_to_ycrcb

    a = make_attack("frequency")
    for size, mag in ((32, 30.0), (64, 90.0)):
        x = 0.5 + 0.05 * _batch(b=2, h=size, w=size)  # mid-range: no clamping
        xp = a.apply(x)[0]
        ref = frequency_pipeline(x.double(), mag).float()
        assert torch.allclose(xp, ref, atol=1e-5)
        d = dct_matrix(32)
        delta = block_dct(rgb_to_ycrcb(xp.double() * 255), d) - block_dct(
            rgb_to_ycrcb(x.double() * 255), d
        )
        for r, c in ((15, 15), (31, 31)):
            assert torch.allclose(
                delta[:, 1:, r::32, c::32], torch.tensor(mag, dtype=torch.float64), atol=1e-3
            )
        delta[:, 1:, 15::32, 15::32] = 0
        delta[:, 1:, 31::32, 31::32] = 0
        assert delta.abs().max() < 1e-3


def test_sig_is_clean_label_with_delta():
    a = make_attack("sig", preset="ultraclean")
    assert a.label_mode == "clean"
    x = torch.full((1, 3, 32, 32), 0.5)
    xp, _ = a.apply(x)
    # sin(2 pi j 6 / 32) peaks at 0.9952 (j = 1): max |delta| = 20/255 x 0.9952
    assert abs(float((xp - x).abs().max()) - 20 / 255) < 2e-3
    xp40 = make_attack("sig").apply(x)[0]
    assert abs(float((xp40 - x).abs().max()) - 40 / 255) < 3e-3
    test_trig = make_attack("sig", preset="ultraclean", delta_test=40).apply(x, train=False)[0]
    assert torch.allclose(test_trig, xp40)


def test_wanet_identity_when_no_warp_and_noise_examples():
    x = _batch(b=3)
    assert torch.allclose(make_attack("wanet", s=0.0).apply(x)[0], x, atol=1e-5)
    a = make_attack("wanet")
    assert a.n_extra(10, 1000) == 20
    noisy = a.extra(x)
    assert not torch.allclose(noisy, a.apply(x)[0])


def test_bpp_squeeze_levels_and_dithering_matches_reference():
    from detox.attacks.bpp import floyd_steinberg

    x = _batch(b=2, h=8, w=8)
    xp = make_attack("bpp").apply(x)[0]
    assert torch.allclose(xp * 7, (xp * 7).round(), atol=1e-5)
    # the authors' per-pixel algorithm (0-255 scale), as a reference
    img = (x[0].double() * 255).numpy().copy()
    c, h, w = img.shape
    for yy in range(h):
        for xx in range(w):
            old = img[:, yy, xx].copy()
            new = np.round(old / 255 * 7) / 7 * 255
            err = old - new
            img[:, yy, xx] = new
            if xx + 1 < w:
                img[:, yy, xx + 1] += err * 7 / 16
            if yy + 1 < h:
                img[:, yy + 1, xx] += err * 5 / 16
                if xx > 0:
                    img[:, yy + 1, xx - 1] += err * 3 / 16
                if xx + 1 < w:
                    img[:, yy + 1, xx + 1] += err * 1 / 16
    got = floyd_steinberg(x.double(), 8)[0].numpy() * 255
    assert np.abs(got - img).max() < 1e-6
    a = make_attack("bpp", dithering=True)
    assert torch.allclose(
        a.apply(x)[0].double(), floyd_steinberg(x.double(), 8).float().double(), atol=1e-6
    )
    assert a.n_extra(5, 1000) == 100
    neg = a.extra(x)
    assert neg.shape == x.shape and not torch.equal(neg, xp)


def test_refool_pool_comes_from_non_target_classes():
    ds = _synthetic([30, 30, 30])
    a = make_attack("refool", seed=1, pool_size=20, target_map=TargetMap.all2one(1, 3))
    a.prepare(ds)
    assert len(a.pool_index) == 20 and bool((ds.y[a.pool_index] != 1).all())
    b = make_attack("refool", seed=1, pool_size=20, target_map=TargetMap.all2one(1, 3))
    b.prepare(ds)
    x = _batch(b=4)
    assert torch.equal(a.apply(x)[0], b.apply(x)[0])


def test_blended_reads_a_user_image(tmp_path):
    from PIL import Image

    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :10] = 255
    path = tmp_path / "trigger.png"
    Image.fromarray(arr).save(path)
    xp = make_attack("blended", image=str(path), alpha=1.0).apply(torch.zeros(1, 3, 32, 32))[0]
    assert float(xp[0, :, :, :12].mean()) > 0.9 and float(xp[0, :, :, 20:].mean()) < 0.1


# -- target maps and counts --------------------------------------------------------------
def test_target_maps():
    y = torch.tensor([0, 1, 2, 3])
    m = TargetMap.all2one(2, 4)
    assert m(y).tolist() == [2, 2, 2, 2] and m.eligible(y).tolist() == [True, True, False, True]
    m = TargetMap.all2all(4)
    assert m(y).tolist() == [1, 2, 3, 0] and bool(m.eligible(y).all())
    m = TargetMap.source_specific(0, [1, 3], 4)
    assert m(y).tolist() == [0, 0, 2, 0] and m.eligible(y).tolist() == [False, True, False, True]
    with pytest.raises(ConfigError, match="not a class"):
        TargetMap.all2one(4, 4)
    with pytest.raises(ConfigError, match="source_classes"):
        TargetMap("source", 0, None, 4)
    with pytest.raises(ConfigError, match="target_mode"):
        TargetMap("one2many", 0)


def test_poison_count():
    assert poison_count(0.1, 600) == 60
    assert poison_count(0.01, 600) == 6
    assert poison_count(0.1, 500, min_count=300) == 300
    assert poison_count(0.001, 100) == 1
    for bad in (0, 0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="ratio"):
            poison_count(bad, 100)


# -- specs -------------------------------------------------------------------------------
def test_spec_parsing():
    specs = parse_attacks("badnets,blended")
    assert [s.name for s in specs] == ["badnets", "blended"]
    s = parse_attacks("badnets:ratio=0.05:target=3:cell=2")[0]
    assert (s.ratio, s.target, s.params) == (0.05, 3, {"cell": "2"})
    s1, s2 = parse_attacks("frequency:positions=15,15,31,31,badnets:target_mode=source:source=1+2")
    assert s1.params == {"positions": "15,15,31,31"} and s2.source_classes == (1, 2)
    assert make_attack("frequency", positions=s1.params["positions"]).config.positions == (
        15,
        15,
        31,
        31,
    )
    assert len(parse_attacks("badloss-cifar10")) == 7
    assert parse_attacks(AttackSpec("sig", target="random"))[0].target == "random"
    assert parse_attacks({"name": "wanet", "ratio": 0.2})[0].ratio == 0.2
    assert str(AttackSpec.parse("sig:delta=40:target=2")) == "sig:target=2:delta=40"


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("nope", "valid attacks: .*badnets.*valid suites: .*badloss-cifar10"),
        ("badnets:ratio=0", "ratio"),
        ("badnets:ratio=1.5", "ratio"),
        ("badnets:ratio=abc", "ratio"),
        ("badnets:target=-1", "not a class"),
        ("badnets:target_mode=everything", "target_mode"),
        ("badnets:oops", "key=value"),
        ("badloss-cifar10:ratio=0.1", "suite"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_attacks(spec)


def test_bad_params():
    with pytest.raises(ConfigError, match="valid settings"):
        make_attack("badnets", colour="red")
    with pytest.raises(ConfigError, match="alpha"):
        make_attack("blended", alpha=0)
    with pytest.raises(ConfigError, match="positions"):
        make_attack("frequency", positions=(15, 40))


def test_trigger_bigger_than_image():
    with pytest.raises(ConfigError, match="at least 3x3"):
        make_attack("badnets").apply(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ConfigError, match="at least 32x32"):
        make_attack("frequency").apply(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ConfigError, match="at least"):
        poison(_synthetic([10, 10], h=16), "frequency", seed=0)


def test_unreadable_blend_image(tmp_path):
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"this is not a png")
    for path in (bad, tmp_path / "missing.png"):
        with pytest.raises(ConfigError, match="'image'"):
            make_attack("blended", image=str(path))
        with pytest.raises(ConfigError, match="'image'"):
            poison(_synthetic([10, 10]), AttackSpec("blended", params={"image": str(path)}))


# -- poisoning ---------------------------------------------------------------------------
def _check_pset(ps: PoisonedSet, train: ImageDataset):
    assert torch.equal(ps.y_true, train.y)
    clean = ps.attack_id == -1
    for i, rec in enumerate(ps.attacks):
        idx = (ps.attack_id == i).nonzero().flatten()
        assert len(idx) == rec["n_poisoned"]
        assert not torch.equal(ps.x[idx], train.x[idx])
        if rec["label_mode"] == "clean":
            assert bool((ps.y_true[idx] == rec["target"]).all())
            assert torch.equal(ps.y[idx], ps.y_true[idx])
        elif rec["target_mode"] == "all2one":
            assert bool((ps.y[idx] == rec["target"]).all())
            assert bool((ps.y_true[idx] != rec["target"]).all())
        extra = torch.tensor(rec["extra_index"], dtype=torch.int64)
        assert len(extra) == rec["n_extra"]
        if len(extra):
            assert bool(clean[extra].all()) and torch.equal(ps.y[extra], ps.y_true[extra])
        trig = ps.triggered.get(rec["name"])
        if trig is not None:
            assert len(trig) == rec["n_triggered_test"]
            assert bool((trig.y_true != trig.y_target).all())
            assert torch.equal(trig.y_true, ps.test.y[trig.index])
    # clean examples untouched except the extras
    extras = torch.zeros(len(ps), dtype=torch.bool)
    for rec in ps.attacks:
        extras[torch.tensor(rec["extra_index"], dtype=torch.int64)] = True
    keep = clean & ~extras
    assert torch.equal(ps.x[keep], train.x[keep]) and torch.equal(ps.y[keep], train.y[keep])
    all_extra = sum(rec["n_extra"] for rec in ps.attacks)
    assert int(extras.sum()) == all_extra, "extras of different attacks overlap"


def test_poison_disjoint_counts_and_labels(cifar_small, cifar_test_small):
    ps = poison(
        cifar_small,
        "badnets,blended:ratio=0.05,sig:ratio_of=target_class,wanet:ratio=0.02,bpp:ratio=0.02,refool:target=3",
        seed=0,
        test=cifar_test_small,
    )
    counts = {r["name"]: r["n_poisoned"] for r in ps.attacks}
    # 600 images, 60 per class: dirty ratios of 600, clean ratios of the 60 target images
    assert counts == {"badnets": 60, "blended": 30, "sig": 6, "wanet": 12, "bpp": 12, "refool": 6}
    # (sig reads 0.1 of its target class here: the spec says ratio_of=target_class)
    assert {r["name"]: r["n_extra"] for r in ps.attacks}["wanet"] == 24
    assert {r["name"]: r["n_extra"] for r in ps.attacks}["bpp"] == 60
    assert ps.summary()["n_poisoned"] == sum(counts.values())
    _check_pset(ps, cifar_small)
    assert set(ps.triggered) == set(counts)
    assert len(ps.triggered["badnets"]) == 270  # test images not of class 0
    again = poison(
        cifar_small,
        "badnets,blended:ratio=0.05,sig:ratio_of=target_class,wanet:ratio=0.02,bpp:ratio=0.02,refool:target=3",
        seed=0,
        test=cifar_test_small,
    )
    assert torch.equal(again.x, ps.x) and torch.equal(again.attack_id, ps.attack_id)
    other = poison(cifar_small, "badnets", seed=1)
    assert not torch.equal(other.attack_id, ps.attack_id == 0)


def test_target_modes_in_poison():
    ds = _synthetic([20] * 5)
    ps = poison(ds, "badnets:target_mode=all2all:ratio=0.5", seed=0, test=ds)
    idx = ps.attack_id == 0
    assert int(idx.sum()) == 50 and torch.equal(ps.y[idx], (ps.y_true[idx] + 1) % 5)
    assert len(ps.triggered["badnets"]) == 100
    ps = poison(ds, "badnets:target_mode=source:source=1+2:target=4:ratio=0.3", seed=0, test=ds)
    idx = ps.attack_id == 0
    assert int(idx.sum()) == 30 and set(ps.y_true[idx].tolist()) <= {1, 2}
    assert bool((ps.y[idx] == 4).all())
    assert set(ps.triggered["badnets"].y_true.tolist()) == {1, 2}


def test_poison_bad_input():
    ds = _synthetic([20] * 5)
    with pytest.raises(ConfigError, match="not a class"):
        poison(ds, "badnets:target=5")
    with pytest.raises(ConfigError, match="only 20 free images of the target class"):
        poison(ds, AttackSpec("sig", min_count=25))
    with pytest.raises(ConfigError, match="needs 100 examples"):
        poison(ds, "badnets:ratio=1.0")  # only 80 are not of the target class
    with pytest.raises(ConfigError, match="all-to-all"):
        poison(ds, "sig:target_mode=all2all")
    with pytest.raises(ConfigError, match="valid attacks"):
        poison(ds, "badnetz")


def test_badloss_cifar10_suite(cifar_small, cifar_test_small):
    ps = poison(cifar_small, "badloss-cifar10", seed=5, test=cifar_test_small)
    names = [r["name"] for r in ps.attacks]
    assert names == [
        "patch",
        "single-pixel",
        "blend-random",
        "blend-pattern",
        "sinusoid",
        "frequency",
        "narcissus",
    ]
    targets = [r["target"] for r in ps.attacks]
    assert len(set(targets)) == 7, "each attack gets its own target"
    # 1% of 600; sinusoid 10% of its class's 60; narcissus 0.5% of 60, at least one image
    assert [r["n_poisoned"] for r in ps.attacks] == [6] * 6 + [1]
    assert ps.attacks[-1]["label_mode"] == "clean" and ps.attacks[-1]["artefacts"]
    _check_pset(ps, cifar_small)
    again = poison(cifar_small, "badloss-cifar10", seed=5)
    assert [r["target"] for r in again.attacks] == targets
    assert torch.equal(again.x, ps.x)


def test_badloss_gtsrb_suite_sinusoid_minimum():
    counts = [40] * 43
    counts[7] = 400  # the only class with room for max(10%, 300) sinusoid images
    ds = _synthetic(counts, seed=2)
    ps = poison(ds, "badloss-gtsrb", seed=0)
    rec = {r["name"]: r for r in ps.attacks}
    assert rec["sinusoid"]["target"] == 7 and rec["sinusoid"]["n_poisoned"] == 300
    n = len(ds)
    assert rec["patch"]["n_poisoned"] == int(0.02 * n) and rec["single-pixel"]["n_poisoned"] == int(
        0.04 * n
    )
    _check_pset(ps, ds)


def test_badloss_imagenet_suite_uses_large_settings():
    ds = _synthetic([60] * 4, h=64, seed=3)
    ps = poison(ds, "badloss-imagenette", seed=0)
    rec = {r["name"]: r for r in ps.attacks}
    assert list(rec) == ["patch", "blend-random", "blend-pattern", "sinusoid", "frequency"]
    assert all(r["large_image"] for r in ps.attacks)
    assert rec["blend-random"]["effective_params"]["alpha"] == 0.15
    assert rec["frequency"]["effective_params"]["magnitude"] == 90.0
    i = list(rec).index("patch")
    idx = (ps.attack_id == i).nonzero().flatten()
    changed = (ps.x[idx] != ds.x[idx]).any(dim=1)
    assert int(changed[:, :32, :].sum()) == 0 and int(changed[:, :, :32].sum()) == 0
    assert len(parse_attacks("badloss-imagenet")) == 5


def test_poisoned_set_round_trip(tmp_path, cifar_small, cifar_test_small):
    ps = poison(
        cifar_small, "badnets,wanet:ratio=0.02,sig", seed=3, test=cifar_test_small, test_limit=50
    )
    assert all(len(t) == 50 for t in ps.triggered.values())
    ps.save(tmp_path / "ps")
    back = PoisonedSet.load(tmp_path / "ps")
    for key in ("x", "y", "y_true", "attack_id"):
        assert torch.equal(getattr(back, key), getattr(ps, key))
    assert json.loads(json.dumps(ps.attacks)) == back.attacks
    for name, t in ps.triggered.items():
        bt = back.triggered[name]
        assert torch.equal(bt.x, t.x) and torch.equal(bt.y_target, t.y_target)
        assert torch.equal(bt.index, t.index)
    # the attack can be rebuilt from its record: same test-time trigger
    for rec in back.attacks:
        a = attack_from_record(rec, back.num_classes)
        t = back.triggered[rec["name"]]
        assert torch.equal(a.apply_uint8(back.test.x[t.index], train=False), t.x)


def test_attack_grid_png(tmp_path, cifar_small, cifar_test_small):
    from detox.plots.samples import attack_grid

    ps = poison(cifar_small, "badnets,sig", seed=0, test=cifar_test_small, test_limit=8)
    out = attack_grid(ps, tmp_path / "grid.png", n=2)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ps.triggered.clear()  # rebuilt from the attack records
    assert attack_grid(ps, tmp_path / "grid2.png", n=2).is_file()
    with pytest.raises(ConfigError):
        attack_grid(PoisonedSet.from_clean(cifar_small), tmp_path / "none.png")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", FIXED)
def test_same_trigger_on_cuda(name):
    x = _batch()
    a = _attack(name, seed=4)
    cpu = a.apply(x)[0]
    gpu = a.apply(x.cuda())[0].cpu()
    assert (cpu - gpu).abs().max() < 1e-4
