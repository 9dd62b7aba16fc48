"""UltraClean: exact denoisers, the score on a real backdoored model, the cuts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage

from detox.config import make_config
from detox.defenses.cut import cut_fraction
from detox.defenses.detectors import DETECTORS, DetectorContext, build_detector
from detox.defenses.detectors.ultraclean import (
    UltraClean,
    UltraCleanConfig,
    fold_batchnorm,
    known_target_budget,
    median_filter,
    nlm_denoise,
    select_rank,
)
from detox.errors import ConfigError, DataError


def scipy_median(x_nchw: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """The authors' call, image by image, on HWC."""
    return np.stack(
        [
            ndimage.median_filter(a.transpose(1, 2, 0), size=size, mode="reflect").transpose(
                2, 0, 1
            )
            for a in x_nchw
        ]
    )


def cv2_nlm(x_nchw: np.ndarray) -> np.ndarray:
    """The authors' call, image by image, on HWC as loaded (RGB)."""
    return np.stack(
        [
            cv2.fastNlMeansDenoisingColored(
                np.ascontiguousarray(a.transpose(1, 2, 0)), None, 5, 5, 7, 13
            ).transpose(2, 0, 1)
            for a in x_nchw
        ]
    )


# ---------------------------------------------------------------------------------------
# median filter


@pytest.mark.parametrize("n", [2, 3, 4, 9, 12])
def test_selection_network_zero_one_principle(n):
    """Every rank of every 0/1 input (the 0-1 principle: then it holds for all inputs)."""
    bits = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.uint8)
    want = np.sort(bits, axis=1)
    cols = [torch.from_numpy(np.ascontiguousarray(bits[:, i])) for i in range(n)]
    for rank in range(n):
        assert np.array_equal(select_rank(cols, rank).numpy(), want[:, rank]), (n, rank)


@pytest.mark.parametrize(
    "shape", [(4, 3, 32, 32), (3, 3, 7, 5), (2, 3, 1, 1), (2, 3, 2, 9), (2, 1, 6, 6)]
)
@pytest.mark.parametrize("size", [(2, 2, 3), (2, 2, 1), (3, 3, 3), (4, 3, 2), (5, 1, 1)])
def test_median_matches_scipy_random(shape, size):
    x = np.random.default_rng(sum(shape) + sum(size)).integers(0, 256, shape, dtype=np.uint8)
    got = median_filter(torch.from_numpy(x), size).numpy()
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, scipy_median(x, size))


def test_median_matches_scipy_on_cifar(cifar_small):
    x = cifar_small.x[:300]
    for mode, size in (("all-channels", (2, 2, 3)), ("per-channel", (2, 2, 1))):
        det = build_detector("ultraclean", median_mode=mode)
        assert det.config.median_window == size
        np.testing.assert_array_equal(det.median(x).numpy(), scipy_median(x.numpy(), size))


def test_median_semantics():
    """SciPy's conventions, spelled out: window rows/cols {i-1, i}, upper middle of 12."""
    x = np.random.default_rng(0).integers(0, 256, (1, 3, 6, 6), dtype=np.uint8)
    got = median_filter(torch.from_numpy(x)).numpy()
    i, j = 3, 4
    for c, chans in ((0, (0, 0, 1)), (1, (0, 1, 2)), (2, (1, 2, 2))):
        vals = np.sort([x[0, k, r, s] for k in chans for r in (i - 1, i) for s in (j - 1, j)])
        assert got[0, c, i, j] == vals[6]  # the 7th smallest of 12
    # borders: index -1 reflects to 0, so the top-left output is a median of repeated values
    corner = np.sort([x[0, k, 0, 0] for k in (0, 0, 1) for _ in range(4)])
    assert got[0, 0, 0, 0] == corner[6]


# ---------------------------------------------------------------------------------------
# non-local means


def test_nlm_matches_cv2_per_image(cifar_small):
    x = cifar_small.x[:120]
    det = build_detector("ultraclean", nlm_chunk=50)
    np.testing.assert_array_equal(det.nlm(x).numpy(), cv2_nlm(x.numpy()))


def test_nlm_swap_rb_gives_opencv_bgr(cifar_small):
    x = cifar_small.x[:16]
    det = build_detector("ultraclean", nlm_swap_rb=True)
    want = cv2_nlm(x.numpy()[:, ::-1])[:, ::-1]  # BGR in, back to RGB
    np.testing.assert_array_equal(det.nlm(x).numpy(), want)


@pytest.mark.parametrize("shape", [(5, 10, 10, 3), (4, 20, 33, 3), (3, 9, 40, 3), (2, 48, 64, 3)])
def test_nlm_mosaic_exact_on_odd_sizes(shape):
    x = np.random.default_rng(shape[1]).integers(0, 256, shape, dtype=np.uint8)
    for args in ((5, 5, 7, 13), (10, 3, 5, 21)):
        want = np.stack([cv2.fastNlMeansDenoisingColored(a, None, *args) for a in x])
        np.testing.assert_array_equal(nlm_denoise(x, *args), want)


# ---------------------------------------------------------------------------------------
# config, registry, bad input


def test_registered_with_presets():
    assert DETECTORS.get("ultraclean") is UltraClean
    assert UltraClean.needs_model
    det = build_detector("ultraclean", "paper")
    assert det.remove_fraction() == 0.3
    cfg = det.config
    assert (cfg.nlm_h, cfg.nlm_h_color, cfg.nlm_template, cfg.nlm_search) == (5, 5, 7, 13)
    assert cfg.median_window == (2, 2, 3) and cfg.score_space == "logits"
    assert cfg.known_target_factor == 1.5
    assert make_config(UltraCleanConfig, median_size="3,3").median_size == (3, 3)
    with pytest.raises(ConfigError, match="median_mode"):
        make_config(UltraCleanConfig, median_mode="rgb")
    with pytest.raises(ConfigError, match="odd"):
        make_config(UltraCleanConfig, nlm_search=12)


def test_bad_input(cifar_small):
    det = build_detector("ultraclean")
    with pytest.raises(ConfigError, match="--model"):
        det.score(cifar_small, DetectorContext(model=None))
    from detox.models import build_model

    gray = cifar_small.x[:4, :1]
    with pytest.raises(DataError, match="3-channel"):
        det.score(gray, DetectorContext(model=build_model("small-cnn", 10, 0.25, in_channels=1)))


# ---------------------------------------------------------------------------------------
# scores on a model that learned a BadNets backdoor


@pytest.fixture(scope="module")
def backdoored(cifar_train, cifar_test_small):
    """small-cnn (width 0.25) trained 4 epochs on 1000 real CIFAR-10 images, 20% BadNets
    (target 0). No augmentation, so the 3x3 corner patch is learned within a few epochs.
    Seeded (init, order) and deterministic on the CPU; at this tiny budget a few seeds
    underfit (seed 0: CA 15%, ASR 0.7), seeds 1-6 learn the backdoor (ASR 1.0)."""
    from detox.attacks import make_attack
    from detox.data import stratified_subsample
    from detox.models import build_model
    from detox.training import TrainConfig, predict, train

    idx = stratified_subsample(cifar_train.y, 1000, seed=3, num_classes=10)
    x, y = cifar_train.x[idx].clone(), cifar_train.y[idx].clone()
    poison = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:200]
    attack = make_attack("badnets")
    x_poison = attack.apply_uint8(x[poison])
    x_train, y_train = x.clone(), y.clone()
    x_train[poison], y_train[poison] = x_poison, 0
    cfg = make_config(
        TrainConfig,
        "smoke",
        width=0.25,
        epochs=4,
        batch_size=32,
        augment=False,
        seed=1,
        progress=False,
    )
    torch.manual_seed(1)  # model init
    model = build_model(cfg.model, 10, width=cfg.width, dataset="cifar10")
    model = train(model, x_train, y_train, cfg, device="cpu").model
    test = cifar_test_small
    keep = test.y != 0
    asr = float((predict(model, attack.apply_uint8(test.x[keep])) == 0).float().mean())
    return {
        "model": model, "x_clean": x[poison], "x_poison": x_poison, "asr": asr,
        "train": (x_train, y_train, poison), "config": cfg,
    }  # fmt: skip


def test_badnets_images_score_higher_than_their_clean_originals(backdoored):
    assert backdoored["asr"] >= 0.8, f"the backdoor was not learned (ASR {backdoored['asr']:.2f})"
    det = build_detector("ultraclean")
    ctx = DetectorContext(model=backdoored["model"], progress=False)
    n = 100
    s_poison = det.score(backdoored["x_poison"][:n], ctx)
    parts = ctx.artifacts["ultraclean"]
    s_clean = det.score(backdoored["x_clean"][:n], ctx)
    assert s_poison.dtype == np.float64 and s_poison.shape == (n,)
    np.testing.assert_allclose(s_poison, parts["median_distance"] + parts["nlm_distance"])
    # measured (seed 1): 100% of pairs, mean ratio ~4, AUROC ~0.99
    assert (s_poison > s_clean).mean() >= 0.8
    assert s_poison.mean() >= 1.5 * s_clean.mean()
    # pooled, the scores separate poisons from clean images (AUROC of the mixed set)
    from detox.metrics import detection_metrics

    s = np.concatenate([s_poison, s_clean])
    is_poison = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    assert detection_metrics(s, is_poison)["auroc"] >= 0.8


def test_score_equals_the_authors_per_image_loop(backdoored):
    """Batched, pipelined scores = scipy median + cv2 NLM + one image per forward pass."""
    model = backdoored["model"]
    x = torch.cat([backdoored["x_poison"][:12], backdoored["x_clean"][:12]])
    xm = torch.from_numpy(scipy_median(x.numpy(), (2, 2, 3)))
    xn = torch.from_numpy(cv2_nlm(x.numpy()))
    want = []
    with torch.no_grad():
        for a, m, b in zip(x, xm, xn):
            z, zm, zn = (model(t[None].float() / 255).double() for t in (a, m, b))
            want.append(float((z - zm).abs().sum() + (z - zn).abs().sum()))
    # small blocks and NLM chunks: exercises the pipeline's block boundaries
    det = build_detector("ultraclean", batch_size=10, nlm_chunk=3, workers=2)
    got = det.score(x, DetectorContext(model=model, progress=False))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    same = build_detector("ultraclean", workers=1).score(x, DetectorContext(model=model))
    np.testing.assert_allclose(got, same, rtol=1e-5, atol=1e-5)
    soft = build_detector("ultraclean", score_space="softmax").score(
        x, DetectorContext(model=model, progress=False)
    )
    assert np.all((soft >= 0) & (soft <= 4))  # two L1 distances of probability vectors


def test_batchnorm_folding_keeps_the_scores(backdoored):
    model = backdoored["model"]
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    folded = fold_batchnorm(model)
    assert n_bn == 4 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == n_bn  # a copy
    x = torch.cat([backdoored["x_poison"][:16], backdoored["x_clean"][:16]])
    ctx = DetectorContext(model=model, progress=False)
    a = build_detector("ultraclean", fold_batchnorm=True).score(x, ctx)
    b = build_detector("ultraclean", fold_batchnorm=False).score(x, ctx)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_batchnorm_folding_traces_airnet():
    """AirNet's layers subclass Conv2d / BatchNorm2d; they stay leaves of the trace, so the
    BatchNorms that follow a convolution fold (3 of its 6; the others follow a pooling)."""
    from detox.models import build_model

    torch.manual_seed(0)
    model = build_model("airnet", num_classes=10)
    model.train()
    for _ in range(3):  # running statistics away from their initial values
        model(torch.rand(32, 3, 32, 32))
    model.eval()
    folded = fold_batchnorm(model)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules()) == 3
    x = torch.rand(16, 3, 32, 32)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)


class _Branchy(torch.nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x):
        h = self.bn(self.conv(x))
        if h.mean() > 1e9:
            h = -h
        return self.fc(h.mean((2, 3)))


def test_untraceable_model_is_used_as_is(cifar_small):
    torch.manual_seed(0)
    ctx = DetectorContext(model=_Branchy(), progress=False)
    with pytest.warns(UserWarning, match="model as is"):
        s = build_detector("ultraclean").score(cifar_small.x[:8], ctx)
    assert s.shape == (8,) and np.isfinite(s).all()


# ---------------------------------------------------------------------------------------
# cuts


def test_fraction_cut_keeps_the_requested_count():
    scores = np.random.default_rng(0).random(1000)
    det = build_detector("ultraclean")
    removed = det.cut(scores, DetectorContext())
    assert removed.sum() == 300 and (~removed).sum() == 700
    assert scores[removed].min() > scores[~removed].max()
    np.testing.assert_array_equal(removed, cut_fraction(scores, 0.3))


def test_known_target_budget_and_cut():
    assert known_target_budget(100) == 150
    assert known_target_budget(3) == 4  # floor, as the authors' int()
    assert known_target_budget(20, 1.15) == 23  # 1.15 * 20 = 22.999... in floating point
    assert known_target_budget(100, 1.35) == 135
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 100)
    scores = rng.random(1000)
    det = build_detector("ultraclean")
    assert det.known_target_budget(40) == 60
    removed = det.cut_known_target(scores, labels, target=2, n_poisons=40)
    assert removed.sum() == 60 and np.all(labels[removed] == 2)
    in_class = np.flatnonzero(labels == 2)
    top = in_class[np.argsort(-scores[in_class])[:60]]
    assert set(np.flatnonzero(removed)) == set(top)
    # a budget beyond the class size removes the whole class, nothing else
    assert det.cut_known_target(scores, labels, 2, n_poisons=90).sum() == 100


def test_known_target_setting_drives_the_cut(cifar_small):
    """``known_target`` switches the detector's cut to the in-class budget, taking the
    number of poisons from the setting or from the set's ground truth."""
    from detox.attacks.poison import poison

    pset = poison(cifar_small, "badnets", seed=0)
    scores = np.random.default_rng(2).random(len(pset))
    labels = pset.y.numpy()
    ctx = DetectorContext.for_set(pset)
    assert ctx.n_poisons == int(pset.is_poisoned.sum()) > 0
    det = build_detector("ultraclean", known_target=0)
    removed = det.cut(scores, ctx)
    assert removed.sum() == known_target_budget(ctx.n_poisons) and np.all(labels[removed] == 0)
    det = build_detector("ultraclean", known_target=0, known_poisons=4)
    assert det.cut(scores, ctx).sum() == 6
    # no ground truth and no known_poisons: a clear error
    with pytest.raises(ConfigError, match="known_poisons"):
        build_detector("ultraclean", known_target=0).cut(scores, DetectorContext(labels=labels))
    with pytest.raises(ConfigError, match="known_target"):
        build_detector("ultraclean", known_target=-1)


def test_scoring_model_retrains_the_recipe_without_label_smoothing(backdoored, cifar_train):
    """``scoring_model``: with a victim recipe that smooths labels, ``auto`` retrains the
    recipe at label smoothing 0 on the same data (the oracle: that training done here by
    hand through the same function gives the same scores); with a recipe at 0 it scores
    with the victim itself. The retrained model separates the planted BadNets poisons
    (measured: AUROC 0.9997, 200 poisons among 1,000 images; asserted >= 0.9)."""
    import dataclasses

    from detox.data.base import ImageDataset
    from detox.metrics import detection_metrics
    from detox.trained import train_classifier

    x, y, poison = backdoored["train"]
    data = ImageDataset(x, y, list(cifar_train.classes), meta={"dataset": "cifar10"})
    smoothed = dataclasses.replace(backdoored["config"], label_smoothing=0.2)
    det = build_detector("ultraclean")
    ctx = DetectorContext(model=None, train_config=smoothed, cache=False, progress=False)
    got = det.score(data, ctx)
    assert ctx.artifacts["record"]["scoring_model"]["model"] == "plain-ce"
    assert ctx.artifacts["record"]["scoring_model"]["victim_label_smoothing"] == 0.2
    plain = dataclasses.replace(smoothed, label_smoothing=0.0)
    oracle, _ = train_classifier(x, y, data.classes, plain, "cpu", "cifar10", cache=False)
    ctx2 = DetectorContext(model=oracle, train_config=plain, progress=False)
    want = det.score(data, ctx2)
    assert ctx2.artifacts["record"]["scoring_model"]["model"] == "victim"
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    is_poison = np.zeros(len(x), bool)
    is_poison[poison.numpy()] = True
    auroc = detection_metrics(got, is_poison)["auroc"]
    assert auroc >= 0.9
    # a victim whose recipe is unknown (a checkpoint detox did not train) is kept under auto,
    # whatever the run's own recipe: nothing is retrained (this scores 8 images in ms)
    ctx3 = DetectorContext(model=oracle, train_config=smoothed, progress=False)
    few = ImageDataset(x[:8], y[:8], list(cifar_train.classes), meta={"dataset": "cifar10"})
    np.testing.assert_allclose(det.score(few, ctx3), want[:8], rtol=1e-6, atol=1e-6)
    assert ctx3.artifacts["record"]["scoring_model"] == {"model": "victim", "label_smoothing": None}
    forced = build_detector("ultraclean", scoring_model="plain-ce")
    with pytest.raises(ConfigError, match="train_config"):
        forced.score(data, DetectorContext(model=None, train_config=None, progress=False))


def test_score_scope_known_target_scores_only_that_class(backdoored):
    """``score_scope="known-target"`` (the paper's poisoned-class-known variant): only the
    examples labelled ``known_target`` are scored, with exactly the scores the full
    scoring gives them; the rest get -inf, are never cut, and stay out of the detection
    figures (which are then within the class)."""
    from detox.data import PoisonedSet
    from detox.pipeline.detection import detection_report

    x_train, y_train, poison = backdoored["train"]
    x, y = x_train[:300], y_train[:300]
    is_poison = np.zeros(len(x_train), bool)
    is_poison[poison.numpy()] = True
    is_poison = is_poison[:300]
    model = backdoored["model"]
    full = build_detector("ultraclean").score(x, DetectorContext(model=model, progress=False))
    det = build_detector("ultraclean", known_target=0, score_scope="known-target")
    ctx = DetectorContext(model=model, labels=y, progress=False)
    got = det.score(x, ctx)
    in_class = y.numpy() == 0
    np.testing.assert_allclose(got[in_class], full[in_class], rtol=1e-6)
    assert (
        np.all(np.isneginf(got[~in_class]))
        and ctx.artifacts["ultraclean"]["scored"] == in_class.sum()
    )
    removed = det.cut_known_target(got, y, 0, int(is_poison.sum()))
    assert np.array_equal(removed, det.cut_known_target(full, y, 0, int(is_poison.sum())))
    # the report is the in-class one: n = the scored examples
    aid = torch.as_tensor(np.where(is_poison, 0, -1))
    pset = PoisonedSet(x, y, y.clone(), aid, [str(i) for i in range(10)],
                       [{"name": "badnets"}])  # fmt: skip
    rep = detection_report(got, removed, pset)
    assert rep["overall"]["n"] == in_class.sum() and rep["overall"]["n_poison"] == is_poison.sum()
    with pytest.raises(ConfigError, match="needs known_target"):
        build_detector("ultraclean", score_scope="known-target")
