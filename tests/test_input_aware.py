"""Input-aware dynamic backdoor (training-controlled: the mask generator is the artefact,
the pattern generator trains with the victim) on real CIFAR-10 at smoke scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from detox.attacks import AttackSpec, attack_from_record, make_attack, poison
from detox.attacks.context import AttackContext
from detox.attacks.input_aware import InputAwareHook, TriggerGenerator, diversity_loss
from detox.cache import Store
from detox.data import stratified_subsample
from detox.errors import ConfigError

TARGET = 3
# a small mask pre-training: 512 images, 4 epochs of 16 pairs (128 steps), width 8
MASK = {"mask_images": 512, "mask_epochs": 4, "mask_batch_size": 16, "width": 8}


@pytest.fixture(scope="module")
def small(cifar_train):
    idx = stratified_subsample(cifar_train.y, 2000, seed=0, num_classes=10)
    return cifar_train.subset(idx, name="cifar10")


@pytest.fixture(scope="module")
def built(small, cifar_test, tmp_path_factory, one_thread):
    test = cifar_test.subset(
        stratified_subsample(cifar_test.y, 500, seed=1, num_classes=10), name="cifar10-t"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DETOX_CACHE", str(tmp_path_factory.mktemp("ia-cache")))
        spec = AttackSpec("input-aware", target=TARGET, params=MASK)
        ps = poison(small, [spec], seed=0, test=test)
        (entry,) = Store("artefacts").entries()
        stored = load_file(str(entry.file("artefact.safetensors")))
        yield {"ps": ps, "entry": entry, "stored": stored, "test": test, "mp": mp}


def _attack(small, record, cache=False):
    a = attack_from_record(record, 10)  # the run's attack: the same seed
    ctx = AttackContext(train=small, seed=a.seed, dataset="cifar10", progress=False, cache=cache)
    a.prepare(small, ctx)
    return a, ctx


def test_poisons_no_stored_example_and_records_the_artefact(built, small):
    ps = built["ps"]
    rec = ps.attacks[0]
    assert rec["controls_training"] and rec["n_poisoned"] == 0
    assert torch.equal(ps.x, small.x) and not bool(ps.is_poisoned.any())
    assert rec["artefacts"] == [built["entry"].key]
    assert "input-aware" not in ps.triggered  # made after the victim's training


def test_mask_artefact_is_deterministic_and_sparse(built, small):
    a, ctx = _attack(small, built["ps"].attacks[0])  # rebuilt from scratch (no cache)
    assert len(ctx.built) == 1
    state = a.mask_net.state_dict()
    assert set(state) == set(built["stored"])
    assert all(torch.equal(state[k], built["stored"][k]) for k in state)
    # the norm loss pushes the mask's mean towards 0.032 from about 0.5 at initialisation
    x = small.x[:256].float() / 255
    with torch.no_grad():
        m = a.mask_net.threshold(a.mask_net(x))
        fresh = a._new_net(3, 1, "mask").eval()
        m0 = fresh.threshold(fresh(x))
    print(f"mask mean: {float(m0.mean()):.3f} at init, {float(m.mean()):.3f} trained")
    assert float(m0.mean()) > 0.3
    assert float(m.mean()) < 0.12  # measured 0.080 (0.360 at initialisation)
    # input-aware: masks differ between images
    per_image = m.flatten(1)
    assert float((per_image[0] - per_image[1:]).abs().mean()) > 0.01


def test_diversity_loss_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    x1, x2, o1, o2 = (torch.rand(4, 3, 8, 8, generator=g) for _ in range(4))
    a, b, c, d = (t.numpy().astype(np.float64) for t in (x1, x2, o1, o2))
    dist_x = np.sqrt(((a - b) ** 2).mean(axis=(1, 2, 3)))
    dist_o = np.sqrt(((c - d) ** 2).mean(axis=(1, 2, 3)))
    want = (dist_x / (dist_o + 1e-7)).mean()
    assert float(diversity_loss(x1, x2, o1, o2)) == pytest.approx(want, rel=1e-5)
    # equal outputs (two saturated masks): the loss is the formula with 1e-12 under the
    # root, and the gradient is exactly zero (NaN without the 1e-12: the root's slope at 0)
    o = torch.rand(2, 1, 8, 8, requires_grad=True)
    loss = diversity_loss(x1[:2], x2[:2], o, o.detach().clone())
    loss.backward()
    assert float(loss) == pytest.approx((dist_x[:2] / (1e-6 + 1e-7)).mean(), rel=1e-4)
    assert torch.equal(o.grad, torch.zeros_like(o))


def test_hook_shapes_the_batch_as_the_code(built, small):
    a, ctx = _attack(small, built["ps"].attacks[0])
    a.config.amp = False  # exact float32 comparisons
    hook = InputAwareHook(a, torch.device("cpu"))
    xb = small.x[:40].float() / 255
    yb = small.y[:40].clone()
    x_out, y_out = hook.on_batch(0, torch.arange(40), xb, yb)
    nb = 4  # ratio 0.1 of 40
    assert torch.equal(y_out[:nb], torch.full((nb,), TARGET))
    assert torch.equal(y_out[nb:], yb[nb:])  # cross and clean keep their labels
    assert torch.equal(x_out[2 * nb :], xb[2 * nb :])  # the clean part is untouched
    g, mnet = a.pattern_net, a.mask_net
    with torch.no_grad():
        src = torch.cat([xb[:nb], xb[-nb:]])
        p = g(src)  # train mode, the same batch statistics as the hook's call
        m = mnet.threshold(mnet(src))
    want_bd = xb[:nb] + (p[:nb] - xb[:nb]) * m[:nb]
    want_cross = xb[nb : 2 * nb] + (p[nb:] - xb[nb : 2 * nb]) * m[nb:]  # partner's trigger
    torch.testing.assert_close(x_out[:nb], want_bd, atol=1e-5, rtol=0)
    torch.testing.assert_close(x_out[nb : 2 * nb], want_cross, atol=1e-5, rtol=0)
    # the diversity loss joins the classifier's loss, and G gets gradients through both
    loss = hook.on_loss(0, None, y_out, x_out[: 2 * nb].mean())
    loss.backward()
    assert all(q.grad is not None for q in g.parameters() if q.requires_grad)
    assert all(q.grad is None for q in mnet.parameters())  # the mask stays frozen
    before = [q.detach().clone() for q in g.parameters()]
    hook.on_step(0)
    assert any(not torch.equal(b, q) for b, q in zip(before, g.parameters()))
    assert all(q.grad is None for q in g.parameters())


def test_short_training_learns_the_generated_trigger(built, small, cifar_test):
    from detox.config import make_config
    from detox.pipeline import train_victim
    from detox.pipeline.evaluation import evaluate_backdoor
    from detox.training import TrainConfig

    ps = built["ps"]
    tcfg = make_config(TrainConfig, "smoke", epochs=8, seed=0, progress=False)
    model, _ = train_victim(ps, tcfg, "cpu", cache=True)
    trig = ps.triggered["input-aware"]
    assert len(trig) == 450  # the test images outside the target class
    res = evaluate_backdoor(model, ps)["attacks"]["input-aware"]
    # how often clean non-target images are called the target anyway
    clean = ps.test.x[trig.index]
    from detox.training import predict

    base = float((predict(model, clean) == TARGET).float().mean())
    print(f"ASR {res['asr']:.3f}, clean images called the target {base:.3f}")
    # measured on this machine: ASR 0.398 against 0.167 (8 epochs of the small CNN on
    # 2,000 images, the generator learning from scratch alongside, its learning rate
    # following the smoke recipe's one-cycle; with generator_schedule="constant" 0.582
    # against 0.138: at this toy scale G learns faster at full rate, while at the `quick`
    # scale following the schedule lifts the ASR from 71.0% to 81.6%, docs/results.md)
    assert res["asr"] > base + 0.2
    # a cached victim brings its trigger generator back: the same triggered images
    again = poison(small, [AttackSpec("input-aware", target=TARGET, params=MASK)], seed=0,
                   test=built["test"])  # fmt: skip
    train_victim(again, tcfg, "cpu", cache=True)
    assert torch.equal(again.triggered["input-aware"].x, trig.x)


def test_no_trigger_before_training_and_sizes_checked(built, small):
    a, _ = _attack(small, built["ps"].attacks[0])
    with pytest.raises(ConfigError, match="learned while the victim trains"):
        a.trigger(small.x[:2].float() / 255)
    with pytest.raises(ConfigError, match="multiples of 8"):
        a.check_shape((1, 3, 36, 36))
    with pytest.raises(ConfigError, match="must be equal"):
        make_attack("input-aware", ratio=0.1, cross_ratio=0.2)
    assert isinstance(a.mask_net, TriggerGenerator)


def test_generator_learning_rate_follows_the_victims_schedule(built, small):
    """``generator_schedule="victim"`` (the default): G's Adam lr is ``generator_lr`` x the
    classifier's lr factor of each step; ``"constant"`` keeps ``generator_lr``."""
    a, _ = _attack(small, built["ps"].attacks[0])
    hook = InputAwareHook(a, torch.device("cpu"))
    for f in (0.2, 1.0, 0.07):
        hook.on_lr(f)
        assert [g["lr"] for g in hook.opt.param_groups] == [pytest.approx(0.01 * f)]
    a.config.generator_schedule = "constant"
    hook = InputAwareHook(a, torch.device("cpu"))
    hook.on_lr(0.2)
    assert [g["lr"] for g in hook.opt.param_groups] == [0.01]
