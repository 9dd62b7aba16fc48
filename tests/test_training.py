import numpy as np
import pytest
import torch

from detox.config import make_config
from detox.errors import ConfigError
from detox.models import build_model
from detox.training import (
    TrainConfig,
    accuracy,
    lr_factor,
    per_example_loss,
    predict_logits,
    random_crop_flip,
    train,
)


def test_random_crop_flip_is_a_window_of_the_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    out = random_crop_flip(x, 4, False, g, "constant")
    xp = torch.nn.functional.pad(x, (4,) * 4)
    for i in range(16):
        found = any(
            torch.equal(out[i], xp[i, :, r : r + 32, c : c + 32])
            for r in range(9)
            for c in range(9)
        )
        assert found
    flipped = random_crop_flip(x, 0, True, torch.Generator().manual_seed(1))
    for i in range(16):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))


def test_schedules():
    cfg = make_config(TrainConfig, schedule="step", step_milestones=(0.5,), lr=0.1)
    assert lr_factor(cfg, 0, 100, 10) == 1.0 and lr_factor(cfg, 60, 100, 10) == pytest.approx(0.1)
    cfg = make_config(TrainConfig, schedule="cosine")
    assert lr_factor(cfg, 50, 100, 10) == pytest.approx(0.5)
    cfg = make_config(TrainConfig, schedule="onecycle")
    assert lr_factor(cfg, 25, 100, 10) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="schedule"):
        make_config(TrainConfig, schedule="bogus")
    with pytest.raises(ConfigError, match="no setting 'lrr'"):
        make_config(TrainConfig, lrr=1)


class Recorder:
    def __init__(self):
        self.batch_idx, self.epochs = [], []

    def on_batch_losses(self, epoch, index, losses):
        assert losses.shape == index.shape
        self.batch_idx.append((epoch, index.clone()))

    def on_epoch_end(self, epoch, model):
        self.epochs.append(epoch)


def test_train_learns_real_cifar_and_is_reproducible(cifar_train, cifar_test_small):
    from detox.data import stratified_subsample

    idx = stratified_subsample(cifar_train.y, 2000, seed=3, num_classes=10)
    x, y = cifar_train.x[idx], cifar_train.y[idx]
    cfg = make_config(TrainConfig, "smoke", epochs=3, progress=False)
    rec = Recorder()
    res = train(
        build_model(cfg.model, 10, cfg.width, dataset="cifar10", seed=0),
        x,
        y,
        cfg,
        "cpu",
        callbacks=[rec],
    )
    acc = accuracy(res.model, cifar_test_small.x, cifar_test_small.y)
    assert acc > 0.30, acc  # chance is 0.10
    assert rec.epochs == [0, 1, 2]
    for e in range(3):  # every example's loss is reported exactly once per epoch
        seen = torch.cat([i for ep, i in rec.batch_idx if ep == e]).sort().values
        assert torch.equal(seen, torch.arange(len(x)))
    # same seed -> same weights
    res2 = train(build_model(cfg.model, 10, cfg.width, dataset="cifar10", seed=0), x, y, cfg, "cpu")
    for a, b in zip(res.model.state_dict().values(), res2.model.state_dict().values()):
        assert torch.equal(a, b)
    losses = per_example_loss(res.model, x[:50], y[:50])
    ref = torch.nn.functional.cross_entropy(
        predict_logits(res.model, x[:50]), y[:50], reduction="none"
    )
    assert torch.allclose(losses, ref)


def test_train_rejects_bad_input():
    m = build_model("small-cnn", 10)
    cfg = make_config(TrainConfig, "smoke", progress=False)
    with pytest.raises(ConfigError, match="uint8"):
        train(m, torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long), cfg, "cpu")
    with pytest.raises(ConfigError, match="labels"):
        train(
            m,
            torch.zeros(4, 3, 32, 32, dtype=torch.uint8),
            torch.zeros(3, dtype=torch.long),
            cfg,
            "cpu",
        )


def test_hooks_see_the_learning_rate_factor_of_each_step(cifar_train):
    """``on_lr(factor)``: called before every optimiser step with the schedule's factor of
    that step, the value :func:`lr_factor` gives for the step (and the lr the classifier's
    first parameter group uses, over the configured lr)."""
    from detox.training import lr_factor

    class LrRecorder:
        def __init__(self):
            self.factors = []

        def on_lr(self, factor):
            self.factors.append(factor)

    x, y = cifar_train.x[:256], cifar_train.y[:256]
    cfg = make_config(
        TrainConfig, "smoke", epochs=3, batch_size=32, schedule="onecycle", progress=False
    )
    rec = LrRecorder()
    train(build_model(cfg.model, 10, cfg.width, dataset="cifar10", seed=0), x, y, cfg, "cpu",
          callbacks=[rec])  # fmt: skip
    steps = 3 * (256 // 32)
    want = [lr_factor(cfg, s, steps, 256 // 32) for s in range(steps)]
    assert len(rec.factors) == steps
    np.testing.assert_allclose(rec.factors, want, rtol=1e-9)
    assert max(rec.factors) == pytest.approx(1.0, abs=0.05) and rec.factors[-1] < 0.05
