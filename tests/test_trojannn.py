"""TrojanNN (Liu et al. 2018, as BackdoorBench runs it): a patch optimised to excite the
most connected penultimate neurons of a clean surrogate, on real CIFAR-10 at smoke scale.

One artefact is built on 2,000 training images (class-balanced) with the ``quick`` preset
scaled down: a ``smoke`` surrogate trained 4 epochs on them, then the default 1,000
signed-gradient steps. It is checked for: the cache (a second ``prepare`` loads it),
determinism (a rebuild without the cache gives the same bytes), the mask and the pixel
range, the neuron choice (recomputed from the weights), what the patch does to the chosen
neurons compared with random patches, and BadNets-style poisoning with it.
"""

from __future__ import annotations

import json

import pytest
import torch

from detox.attacks import ATTACKS, attack_from_record, make_attack, poison
from detox.attacks.context import AttackContext
from detox.attacks.trojannn import TrojanNN, neuron_activation, square_mask
from detox.cache import Store
from detox.data import stratified_subsample
from detox.errors import ConfigError

SETTINGS = {"surrogate_epochs": 4}  # the quick preset, scaled down
SEED = 3


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("trojannn-cache")
        mp.setenv("DETOX_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def small(cifar_train):
    idx = stratified_subsample(cifar_train.y, 2000, seed=0, num_classes=10)
    return cifar_train.subset(idx, name="cifar10-trojannn")


def _ctx(data, **kw):
    return AttackContext(train=data, seed=SEED, dataset="cifar10", progress=False, **kw)


@pytest.fixture(scope="module")
def built(cache_dir, small, one_thread):
    attack = make_attack("trojannn", seed=SEED, **SETTINGS)
    ctx = _ctx(small)
    attack.prepare(small, ctx)
    return {"attack": attack, "ctx": ctx}


@pytest.fixture(scope="module")
def surrogate(built):
    return built["ctx"].surrogate("smoke", epochs=SETTINGS["surrogate_epochs"])  # cached


def test_registered_with_its_alias_and_presets():
    assert ATTACKS.get("trojan-nn") is TrojanNN and TrojanNN.learned
    assert TrojanNN.preset_config("quick") == TrojanNN.Config()
    assert TrojanNN.preset_config("paper").surrogate_preset == "paper"
    assert TrojanNN.preset_config("backdoorbench").eps == pytest.approx(0.3)


def test_artefact_is_built_once_then_read_from_the_cache(built, small):
    assert len(built["ctx"].built) == 1
    rec = built["attack"].record
    assert len(rec["neurons"]) == 2 and rec["activation"]["trace"][0]["step"] == 0
    again = make_attack("trojannn", seed=SEED, **SETTINGS)
    ctx = _ctx(small)
    again.prepare(small, ctx)
    assert ctx.built == [] and again.record is None  # served from the cache
    assert torch.equal(again.patch, built["attack"].patch)
    assert torch.equal(again.neuron_idx, built["attack"].neuron_idx)
    (entry,) = Store("artefacts").entries()
    assert entry.meta["given"]["attack"] == "trojannn"
    stored = json.loads(entry.file("record.json").read_text())
    assert stored["neurons"] == rec["neurons"]


def test_artefact_is_deterministic_for_a_seed(built, small):
    again = make_attack("trojannn", seed=SEED, **SETTINGS)
    again.prepare(small, _ctx(small, cache=False))  # surrogate and patch rebuilt
    assert torch.equal(again.patch, built["attack"].patch)
    assert torch.equal(again.neuron_idx, built["attack"].neuron_idx)


def test_patch_stays_inside_its_mask_and_in_range(built):
    patch, mask = built["attack"].patch, built["attack"].mask
    assert patch.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
    # BackdoorBench's square.png at 32 px: rows and columns 20-29
    expected = torch.zeros(1, 32, 32)
    expected[:, 20:30, 20:30] = 1
    assert torch.equal(mask, expected)
    assert torch.equal(square_mask((3, 32, 32), 10, 2), expected)
    assert float(patch[:, mask[0] == 0].abs().max()) == 0.0
    assert float(patch.min()) >= 0.0 and float(patch.max()) <= 1.0
    assert torch.equal(patch * 255, (patch * 255).round())  # uint8 levels: exact stamps
    # eps 1: free to leave the white start (measured: 0 and 1 both used)
    inside = patch[:, mask[0] == 1]
    assert float(inside.min()) < 0.5 and float(inside.max()) > 0.5


def test_neurons_are_the_most_connected(built, surrogate):
    w = surrogate.backbone.linear.weight.detach().abs()
    totals = [float(sum(abs(float(v)) for v in w[:, j])) for j in range(w.shape[1])]
    order = sorted(range(len(totals)), key=lambda j: -totals[j])
    assert built["attack"].neuron_idx.tolist() == order[:2]


def test_patch_excites_the_chosen_neurons(built, surrogate, cifar_test):
    attack = built["attack"]
    m, idx = attack.mask, attack.neuron_idx
    g = torch.Generator().manual_seed(0)
    rand = torch.rand(20, 3, 32, 32, generator=g) * m
    with torch.no_grad():
        # on the black canvas the patch was optimised on
        a_rand = float(neuron_activation(surrogate, rand, idx).mean())
        a_troj = float(neuron_activation(surrogate, attack.patch[None] * m, idx).mean())
        # stamped on real test images, against the same images with random patches
        x = cifar_test.x[:400].float() / 255
        xr = torch.where(m.bool(), rand.repeat(20, 1, 1, 1), x)
        s_rand = float(neuron_activation(surrogate, xr, idx).mean())
        s_troj = float(neuron_activation(surrogate, attack.trigger(x), idx).mean())
    canvas, stamped = a_troj / a_rand, s_troj / s_rand
    # measured: canvas 0.40 -> 1.68 (4.2x), stamped 0.65 -> 1.49 (2.3x)
    assert canvas > 2.5
    assert stamped > 1.6
    rec = attack.record["activation"]
    assert rec["end"] > 2 * rec["start"]


def test_poison_relabels_ten_percent_to_the_target(cache_dir, small, cifar_test, one_thread):
    spec = "trojannn:" + ":".join(f"{k}={v}" for k, v in SETTINGS.items())
    ps = poison(small, spec, seed=1, test=cifar_test, test_limit=50)
    (rec,) = ps.attacks
    assert rec["attack"] == "trojannn" and rec["n_poisoned"] == 200  # 10% of 2,000
    idx = (ps.attack_id == 0).nonzero().flatten()
    assert len(idx) == 200 and bool((ps.y[idx] == 0).all())
    untouched = ps.attack_id == -1
    assert torch.equal(ps.x[untouched], small.x[untouched])
    # the same attack rebuilt from the record reads the artefact poison() built
    attack = attack_from_record(rec, ps.num_classes)
    dataset = small.meta.get("dataset") or small.name  # as poison() names it
    ctx = AttackContext(train=small, seed=attack.seed, dataset=dataset, progress=False)
    attack.prepare(small, ctx)
    assert ctx.built == []
    inside = attack.mask[0].bool()
    stamped = (attack.patch * 255).round().to(torch.uint8)
    assert bool((ps.x[idx][:, :, inside] == stamped[:, inside]).all())
    assert torch.equal(ps.x[idx][:, :, ~inside], small.x[idx][:, :, ~inside])
    assert len(ps.triggered["trojannn"]) == 50


def test_no_trigger_before_prepare_or_for_other_sizes(built):
    with pytest.raises(ConfigError, match="call prepare"):
        make_attack("trojannn").apply(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="the images are"):
        built["attack"].apply(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ConfigError, match="at least 12x12"):
        built["attack"].apply(torch.zeros(1, 3, 8, 8))
