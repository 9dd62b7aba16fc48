"""Training-free baseline purifiers (shrinkpad, median) on real CIFAR-10 test images."""

from __future__ import annotations

import pytest
import torch

from detox.defenses.purifiers import PURIFIERS, build_purifier, purify_all
from detox.errors import ConfigError


@pytest.fixture(scope="module")
def images(cifar_test):
    return cifar_test.x[:16]


def test_registered():
    assert {"sampdetox", "shrinkpad", "median"} <= set(PURIFIERS.names())


def test_shrinkpad_moves_content_seeded_and_batch_independent(images):
    p = build_purifier("shrinkpad", "paper")
    a = purify_all(p, images, device="cpu", progress=False, seed=3)
    b = purify_all(p, images, batch_size=5, device="cpu", progress=False, seed=3)
    assert torch.equal(a, b)  # offsets follow the image's position, not the batch
    assert not torch.equal(a, purify_all(p, images, device="cpu", progress=False, seed=4))
    # every image keeps a (32 - 4)^2 block of content and a zero border around it
    zero = (a == 0).all(1)  # (N, H, W)
    assert (zero.flatten(1).sum(1) >= 32 * 32 - 28 * 28).all()
    # offsets vary between images: the content does not always start at (0, 0)
    first_rows = [int((~zero[i]).any(1).nonzero()[0]) for i in range(len(a))]
    assert len(set(first_rows)) > 1 and max(first_rows) <= 4


def test_median_removes_an_isolated_pixel(images):
    x = images.clone()
    x[:, :, 10, 10] = 255  # a single-pixel trigger
    y = purify_all(build_purifier("median", "paper"), x, device="cpu", progress=False)
    assert (y[:, :, 10, 10].int() - images[:, :, 10, 10].int()).abs().float().mean() < 40
    assert (y[:, :, 10, 10] == 255).float().mean() < 0.2


@pytest.mark.parametrize(
    ("name", "setting", "message"),
    [("shrinkpad", {"shrink": 0}, "shrink=0"), ("median", {"kernel": 4}, "kernel=4")],
)
def test_bad_settings(name, setting, message):
    with pytest.raises(ConfigError, match=message):
        build_purifier(name, "paper", **setting)
