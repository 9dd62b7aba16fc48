"""Cognitive Distillation's mask optimisation on real CIFAR-10 images, against models whose
evidence is known by construction (one reads only a 3x3 corner, one the whole image).
Oracle for the TV term: the formula of the authors' code, written with NumPy loops.
Detection on a realistic victim is measured by benchmarks/detectors_subset.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from detox.config import make_config
from detox.defenses.detectors import DetectorContext, build_detector
from detox.defenses.detectors.cognitive_distillation import (
    CognitiveDistillationConfig,
    distil_masks,
    total_variation,
)


def test_total_variation_matches_the_formula():
    m = torch.rand(3, 1, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = m.numpy()
    for k in range(3):
        s = sum((a[k, 0, i + 1, j] - a[k, 0, i, j]) ** 2 for i in range(4) for j in range(7))
        s += sum((a[k, 0, i, j + 1] - a[k, 0, i, j]) ** 2 for i in range(5) for j in range(6))
        assert float(total_variation(m)[k]) == pytest.approx(s / 35, rel=1e-12)


class _Region(nn.Module):
    """Logits = a fixed linear map of the pixels inside ``region`` (a boolean H x W map)."""

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("region", region.float())
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(10, 3 * int(region.sum()), generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, :, self.region.bool()].flatten(1)
        return 10 * v @ self.w.T / v.shape[1] ** 0.5


@pytest.fixture(scope="module")
def images(cifar_small, one_thread):
    return cifar_small.x[:24]


def test_mask_keeps_exactly_the_evidence(images):
    corner = torch.zeros(32, 32, dtype=torch.bool)
    corner[-3:, -3:] = True
    cfg = make_config(CognitiveDistillationConfig, "paper")
    m = distil_masks(_Region(corner), images, cfg, seed=0)[:, 0]
    # the 3x3 corner stays (measured mean 1.00), the rest goes (measured total 10.3)
    assert m[:, -3:, -3:].mean() >= 0.8
    assert m.sum(dim=(1, 2)).mean() <= 20
    # a model that reads every pixel keeps 16 times more of the image (measured mean norm 160)
    whole = distil_masks(_Region(torch.ones(32, 32, dtype=torch.bool)), images, cfg, seed=0)
    assert whole.sum(dim=(1, 2, 3)).mean() >= 100


def test_detector_scores_and_zscore_cut(images):
    corner = torch.zeros(32, 32, dtype=torch.bool)
    corner[-3:, -3:] = True
    det = build_detector("cognitive-distillation", "smoke", batch_size=8)
    ctx = DetectorContext(model=_Region(corner), seed=0, progress=False)
    from detox.data import ImageDataset

    data = ImageDataset(
        images, torch.zeros(len(images), dtype=torch.long), [str(i) for i in range(10)], "x"
    )
    s = det.score(data, ctx)
    np.testing.assert_array_equal(s, det.score(data, ctx))  # deterministic for a seed
    np.testing.assert_allclose(-s, ctx.artifacts["cognitive_distillation"]["mask_l1"])
    removed = det.cut(s, ctx)
    z = (s - s.mean()) / s.std(ddof=1)  # -norm: the most suspicious have the largest z
    np.testing.assert_array_equal(removed, z > 1.0)
