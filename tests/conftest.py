"""Shared test fixtures: real data from ../shared/data at small scale.

The data directory is ``$DETOX_DATA_DIR`` when set, else ``<repo>/../shared/data``. The
cache (extracted archives) is ``$DETOX_CACHE`` when set, else a per-session temp dir that
all tests share, so each archive is extracted once per test run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("DETOX_DATA_DIR", str(SHARED_DATA))
if "DETOX_CACHE" not in os.environ:
    _tmp_cache = Path(os.environ.get("TMPDIR", "/tmp")) / "detox-test-cache"
    os.environ["DETOX_CACHE"] = str(_tmp_cache)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def cifar_train():
    from detox.data import load_dataset

    return load_dataset("cifar10", "train")


@pytest.fixture(scope="session")
def cifar_test():
    from detox.data import load_dataset

    return load_dataset("cifar10", "test")


@pytest.fixture(scope="session")
def cifar_small(cifar_train):
    """600 CIFAR-10 training images, class-balanced, seeded."""
    from detox.data import stratified_subsample

    idx = stratified_subsample(cifar_train.y, 600, seed=0, num_classes=10)
    return cifar_train.subset(idx, name="cifar10-small")


@pytest.fixture(scope="session")
def cifar_test_small(cifar_test):
    from detox.data import stratified_subsample

    idx = stratified_subsample(cifar_test.y, 300, seed=1, num_classes=10)
    return cifar_test.subset(idx, name="cifar10-test-small")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models (UNets on 8x8 images) gain nothing from threads and suffer badly on a
    busy 2-core machine: run the module on one torch thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def planted(cifar_train, one_thread):
    """small-cnn trained 8 epochs on 2,000 CIFAR-10 images of which 80 carry BadNets'
    patch relabelled to class 0 (4%: 29% of class 0, below Activation Clustering's 35%
    size threshold)."""
    import numpy as np

    from detox.attacks import make_attack
    from detox.config import make_config
    from detox.data import ImageDataset, stratified_subsample
    from detox.models import build_model
    from detox.training import TrainConfig, predict, train

    idx = stratified_subsample(cifar_train.y, 2000, seed=3, num_classes=10)
    x, y = cifar_train.x[idx].clone(), cifar_train.y[idx].clone()
    cand = torch.nonzero(y != 0).flatten()
    poison = cand[torch.randperm(len(cand), generator=torch.Generator().manual_seed(0))[:80]]
    attack = make_attack("badnets")
    x[poison] = attack.apply_uint8(x[poison])
    y[poison] = 0
    cfg = make_config(TrainConfig, "smoke", width=0.25, epochs=8, batch_size=32,
                      augment=False, seed=1, progress=False)  # fmt: skip
    model = build_model(cfg.model, 10, width=cfg.width, dataset="cifar10", seed=1)
    model = train(model, x, y, cfg, device="cpu").model
    is_poison = np.zeros(len(x), bool)
    is_poison[poison.numpy()] = True
    data = ImageDataset(x, y, list(cifar_train.classes), "planted")
    other = torch.nonzero(cifar_train.y != 0).flatten()[:200]
    asr = float((predict(model, attack.apply_uint8(cifar_train.x[other])) == 0).float().mean())
    return {"model": model, "data": data, "is_poison": is_poison, "asr": asr}
