"""PSBD on the planted BadNets set of conftest.py (real CIFAR-10, smoke scale)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detox.defenses.detectors import DetectorContext, build_detector
from detox.defenses.detectors.psbd import prediction_shift, select_rate
from detox.metrics import detection_metrics
from detox.utils.seed import derive_seed


@pytest.fixture(scope="module", autouse=True)
def float32_only():
    """This module's planted victim and PSBD's dropout passes run in float32: the 8-epoch
    small CNN's behaviour under dropout depends on bf16 kernel rounding (on a CPU with AMX
    bf16 kernels the rule picks 0.9 and the AUROC inverts to 0.22; in float32 it picks 0.7
    and reaches the figures below, as on the CPUs the test was written on)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("detox.utils.device.bf16_supported", lambda device: device.type == "cuda")
        yield


def test_rate_rule_of_the_authors_code():
    train = {0.1: 0.05, 0.3: 0.30, 0.5: 0.50, 0.7: 0.60, 0.9: 0.95}
    val = {0.1: 0.10, 0.3: 0.70, 0.5: 0.85, 0.7: 0.95, 0.9: 0.99}
    # rates with val >= 0.8: 0.5 (gap 0.35), 0.7 (0.35), 0.9 (0.04): the first largest
    assert select_rate(train, val, 0.8) == 0.5
    # none reaches 0.8: the largest gap over all rates (0.3: 0.40)
    assert select_rate(train, {r: v - 0.3 for r, v in val.items()}, 0.8) == 0.3


def test_dropout_is_only_on_inside_the_measurement(planted):
    model = planted["model"].eval()
    x = planted["data"].x[:64]
    before = model(x.float() / 255)
    psu, shift = prediction_shift(model, x, 1e-9, 3, seed=0)
    np.testing.assert_allclose(psu, 0.0, atol=1e-6)  # no unit dropped: no shift
    assert shift.max() == 0.0
    prediction_shift(model, x, 0.7, 3, seed=0)
    torch.testing.assert_close(model(x.float() / 255), before)  # the hooks are gone


def _ctx(planted, n=300):
    clean = np.flatnonzero(~planted["is_poison"])
    probes = clean[np.random.default_rng(2).permutation(len(clean))[:n]]
    trusted = planted["data"].subset(torch.from_numpy(probes))
    return DetectorContext(model=planted["model"], labels=planted["data"].y.numpy(), seed=0,
                           probes=probes, trusted=trusted, progress=False)  # fmt: skip


def test_psbd_finds_the_planted_patch(planted):
    det = build_detector("psbd", "smoke")
    ctx = _ctx(planted)
    s = det.score(planted["data"], ctx)
    info = ctx.artifacts["psbd"]
    poison = planted["is_poison"]
    # the authors' rule, applied here to the recorded shift ratios: among the rates whose
    # validation shift ratio reaches 0.8, the largest validation - training gap
    tr, va = info["train_shift_ratio"], info["val_shift_ratio"]
    ok = [r for r in sorted(va) if va[r] >= det.config.val_shift_min] or sorted(va)
    gaps = {r: va[r] - tr[r] for r in ok}
    assert info["rate"] == max(ok, key=lambda r: (gaps[r], -r))
    assert info["rate"] == 0.7  # in float32 (the module's fixture)
    m = detection_metrics(s, poison)
    assert m["auroc"] >= 0.6, m  # measured: 0.683 (this 8-epoch small CNN; see below)
    removed = det.cut(s, ctx)
    assert removed[poison].mean() >= 0.45  # measured: TPR 0.56
    assert removed[~poison].mean() <= 0.3  # measured: FPR 0.20
    # the prediction shift itself separates far better than the PSU on this victim: the
    # poisons' predictions change in at most 30% of the dropout passes at 0.7, clean ones'
    # in at least 75%
    _, shift = prediction_shift(
        planted["model"], planted["data"].x, 0.7, 3, seed=derive_seed(0, "psbd")
    )
    assert shift[poison].mean() <= 0.3 and shift[~poison].mean() >= 0.75
    np.testing.assert_array_equal(s, det.score(planted["data"], _ctx(planted)))
