"""The recipes of docs/architecture.md, proved: one tiny method of each kind, defined and
registered here (its module and its registration, nothing else), runs through ``detox run``
and ``detox bench``.

* a **learned attack** whose trigger is an artefact built from a surrogate, cached and
  exportable (``tiny-uap``);
* a **training-controlled attack** whose trigger is learned with the victim through the
  training hook (``tiny-trainpatch``);
* a **model-aware purifier** (``tiny-saliency``) that receives the victim;
* an **input filter** (``tiny-corner``) fitted on trusted inputs;
* a **model repair** (``tiny-finetune``) on trusted examples.

Real CIFAR-10 at smoke scale; the victim settings are those of test_pipeline.py (a victim
that learns BadNets: ASR 1.00 there).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detox.attacks.base import Attack, AttackConfig, hp, register
from detox.attacks.context import AttackTrainHook
from detox.cache import Store
from detox.cli import main
from detox.defenses.filters.base import FILTERS, InputFilter
from detox.defenses.purifiers.base import PURIFIERS, Purifier
from detox.defenses.repairs.base import REPAIRS, ModelRepair

VICTIM = ["--set", "train_subset=1000", "--set", "epochs=4", "--set", "augment=false",
          "--set", "batch_size=32", "--set", "width=0.25"]  # fmt: skip

BUILDS: list[str] = []  # artefacts built (not served from the cache)


# -- a learned attack: a one-step universal perturbation from a surrogate -----------------
@dataclasses.dataclass
class TinyUAPConfig(AttackConfig):
    eps: float = hp(8 / 255, "L_inf, [0, 1] scale", "test example", range="[0, 1]")


@register
class TinyUAP(Attack):
    name = "tiny-uap"
    Config = TinyUAPConfig
    presets = {"smoke": {}, "paper": {"eps": 16 / 255}}  # a run's preset picks its own

    def prepare(self, train, ctx=None):
        def build():
            BUILDS.append(self.name)
            model = ctx.surrogate("smoke", epochs=1)
            x = train.x[:128].float().div(255).requires_grad_(True)
            logits = model(x)
            logits[:, self.config.target].sum().backward()
            delta = self.config.eps * x.grad.mean(0).sign()
            return {"delta": delta}

        self.delta = ctx.artefact(self, build, record={"images": 128})["delta"]

    def affine(self, shape, like, train):
        return 1.0, self.delta.to(like.device, like.dtype)


# -- a training-controlled attack: a patch learned with the victim ------------------------
class _PatchHook(AttackTrainHook):
    def __init__(self, attack):
        super().__init__(attack)
        g = torch.Generator().manual_seed(attack.seed)
        self.patch = torch.rand(3, 3, 3, generator=g).requires_grad_(True)
        self.opt = torch.optim.SGD([self.patch], lr=0.5)
        self.calls = 0

    def on_batch(self, epoch, idx, xb, yb):
        self.calls += 1
        k = max(1, int(self.attack.config.ratio * len(xb)))
        xb = xb.clone()
        xb[:k, :, -3:, -3:] = self.patch.to(xb.device)
        yb = yb.clone()
        yb[:k] = self.attack.config.target
        self.opt.zero_grad()
        return xb, yb

    def on_step(self, epoch):
        self.opt.step()
        with torch.no_grad():
            self.patch.clamp_(0, 1)

    def state_dict(self):
        return {"patch": self.patch.detach()}

    def load_state_dict(self, state):
        self.patch = state["patch"].clone()


@register
class TinyTrainPatch(Attack):
    name = "tiny-trainpatch"
    controls_training = True

    def training_hook(self, ctx):
        self.hook = _PatchHook(self)
        return self.hook

    def _trigger(self, x, *, train, generator):
        out = x.clone()
        out[..., -3:, -3:] = self.hook.patch.detach().to(x.device, x.dtype)
        return out


# -- a model-aware purifier: blank the pixels the victim's top logit is most sensitive to --
@PURIFIERS.register("tiny-saliency")
class TinySaliency(Purifier):
    name = "tiny-saliency"
    needs_model = True
    seen: list[str] = []

    @dataclasses.dataclass
    class Config:
        pixels: int = hp(9, "pixels blanked per image", "test example", range="[1, inf)")
        batch_size: int = hp(64, "images per chunk", "test example", range="[1, inf)")
        seed: int = hp(0, "unused", "test example")

    def prepare(self, ctx):
        super().prepare(ctx)
        TinySaliency.seen.append(self.model_fingerprint)
        return self

    def _purify_batch(self, x, seed, start_index):
        with torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            logits = self.victim(xg)
            logits.max(1).values.sum().backward()
        sal = xg.grad.abs().sum(1).flatten(1)  # (B, H*W)
        top = sal.topk(self.config.pixels, dim=1).indices
        mask = torch.ones_like(sal).scatter_(1, top, 0.0).view(len(x), 1, *x.shape[2:])
        return x * mask + 0.5 * (1 - mask)


# -- an input filter: BadNets-style corners are saturated --------------------------------
@FILTERS.register("tiny-corner")
class TinyCorner(InputFilter):
    name = "tiny-corner"

    @dataclasses.dataclass
    class Config:
        frr: float = hp(0.05, "false rejections allowed on trusted inputs", "test", range="[0, 1]")
        n_probes: int = hp(100, "trusted clean examples", "test example", range="[1, inf)")

    def scores(self, x, ctx):
        c = x[..., -4:, -4:].float()
        return ((c == 0) | (c == 255)).flatten(1).float().mean(1).double().numpy()

    def fit(self, ctx):
        s = self.scores(ctx.require_trusted(self.name).x, ctx)
        self.threshold = float(np.quantile(s, 1 - self.config.frr))


# -- a model repair: fine-tune the victim on the trusted examples --------------------------
@REPAIRS.register("tiny-finetune")
class TinyFinetune(ModelRepair):
    name = "tiny-finetune"
    needs_probes = True

    @dataclasses.dataclass
    class Config:
        steps: int = hp(5, "SGD steps", "test example", range="[1, inf)")
        n_probes: int = hp(100, "trusted clean examples", "test example", range="[1, inf)")

    changed: list[bool] = []

    def repair(self, data, ctx):
        from detox.utils.fingerprint import state_fingerprint

        model = ctx.model.train()
        before = state_fingerprint(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = ctx.trusted.x.float().div(255), ctx.trusted.y
        for _ in range(self.config.steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        TinyFinetune.changed.append(state_fingerprint(model) != before)
        return model.eval()


def _run(tmp_path: Path, name: str, attack: str, defense: str | None = None) -> dict:
    out = tmp_path / name
    args = ["run", "--dataset", "cifar10", "--attack", attack, "--preset", "smoke",
            "--out", str(out), "--quiet", *VICTIM]  # fmt: skip
    if defense:
        args += ["--defense", defense]
    assert main(args) == 0
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DETOX_CACHE", str(tmp_path / "cache"))


def test_learned_attack_builds_its_artefact_once_and_it_travels(tmp_path, one_thread):
    BUILDS.clear()
    s1 = _run(tmp_path, "a", "tiny-uap:ratio=0.2")
    assert BUILDS == ["tiny-uap"]
    s2 = _run(tmp_path, "b", "tiny-uap:ratio=0.2")
    assert BUILDS == ["tiny-uap"]  # the second run read the cached artefact
    assert s1["evaluations"] == s2["evaluations"]
    store = Store("artefacts")
    (entry,) = store.entries()
    meta = entry.meta
    assert meta["given"]["attack"] == "tiny-uap" and meta["given"]["seed"] >= 0
    # export, wipe, import (`detox cache`): the next run uses the imported artefact
    exported = tmp_path / "exported"
    assert main(["cache", "export", entry.key, "--to", str(exported)]) == 0
    for p in store.folder.iterdir():
        shutil.rmtree(p)
    assert store.entries() == []
    assert main(["cache", "import", str(exported)]) == 0
    assert [e.key for e in store.entries()] == [entry.key]
    _run(tmp_path, "c", "tiny-uap:ratio=0.2")
    assert BUILDS == ["tiny-uap"]
    # a damaged copy is refused by name
    (exported / "artefact.safetensors").write_bytes(b"damaged")
    with pytest.raises(Exception, match="SHA-256"):
        Store("artefacts").import_entry(exported)


def test_attack_fit_finds_the_runs_artefact_and_exports_it(tmp_path, one_thread, capsys):
    """`detox attack fit` poisons as `detox run` does (same data, preset and seed), so it
    builds the same artefact a run reads; the run's preset picks the attack's preset."""
    BUILDS.clear()
    fit = ["attack", "fit", "--dataset", "cifar10", "--attack", "tiny-uap:ratio=0.2",
           "--preset", "smoke", "--quiet", *VICTIM]  # fmt: skip
    assert main([*fit, "--export", str(tmp_path / "x")]) == 0
    assert BUILDS == ["tiny-uap"]
    assert "(preset smoke)" in capsys.readouterr().out
    (key,) = [e.key for e in Store("artefacts").entries()]
    meta = json.loads((tmp_path / "x" / "tiny-uap" / "entry.json").read_text())
    assert meta["key"] == key and (tmp_path / "x" / "tiny-uap" / "artefact.safetensors").is_file()
    _run(tmp_path, "a", "tiny-uap:ratio=0.2")
    assert BUILDS == ["tiny-uap"]  # the run read what `attack fit` built
    capsys.readouterr()
    assert main(["attack", "fit", "--attack", "badnets", "--preset", "smoke", "--quiet"]) == 0
    assert "no artefact" in capsys.readouterr().out  # a fixed trigger has nothing to build


def test_training_controlled_attack_learns_its_trigger_with_the_victim(tmp_path, one_thread):
    s = _run(tmp_path, "a", "tiny-trainpatch:ratio=0.2")
    ev = s["evaluations"]["no defense"]
    assert "tiny-trainpatch" in ev["attacks"]  # its triggered test set exists after training
    # the victim learned the patch it trained with (measured: ASR 1.00 on 180 images, CA 0.345)
    assert ev["attacks"]["tiny-trainpatch"]["asr"] >= 0.8
    assert s["poisoned_set"]["n_poisoned"] == 0  # no stored example was poisoned
    # the cached victim brings its hook's patch back: the same figures from the cache
    s2 = _run(tmp_path, "b", "tiny-trainpatch:ratio=0.2")
    assert s2["victim"]["cached"] and s2["evaluations"] == s["evaluations"]


def test_model_aware_purifier_filter_and_repair_through_run(tmp_path, one_thread):
    TinySaliency.seen.clear()
    TinyFinetune.changed.clear()
    s = _run(tmp_path, "a", "badnets:ratio=0.2", "tiny-saliency,tiny-corner,tiny-finetune")
    ev = s["evaluations"]
    base = ev["no defense"]["attacks"]["badnets"]
    assert base["asr"] >= 0.9  # the victim learned BadNets (measured 1.00)
    # the purifier was given the victim (its fingerprint keys the cache)
    assert len(TinySaliency.seen) >= 1 and all(f == TinySaliency.seen[0] for f in TinySaliency.seen)
    assert s["defenses"]["tiny-saliency"]["kind"] == "purifier"
    assert s["defenses"]["tiny-saliency"]["figures"]
    # blanking the 9 most salient pixels breaks the patch (measured: ASR 1.00 -> 0.156)
    assert ev["tiny-saliency"]["attacks"]["badnets"]["asr"] <= 0.5
    # the filter rejects the triggered inputs (saturated corner) and few clean ones:
    # measured FRR 0.015 at the 5% trusted-input threshold, every triggered input rejected
    f = ev["tiny-corner"]
    assert f["frr"] <= 0.15
    assert f["attacks"]["badnets"]["rejected"] >= 0.95
    assert f["attacks"]["badnets"]["asr"] <= 0.05
    assert f["ca"] <= ev["no defense"]["ca"]  # a rejected clean input counts as an error
    # the repair fine-tuned a copy: the repaired model differs, the victim does not
    assert s["defenses"]["tiny-finetune"]["kind"] == "repair"
    assert TinyFinetune.changed == [True]


def test_every_kind_runs_in_a_bench(tmp_path, one_thread):
    cfg = tmp_path / "bench.toml"
    cfg.write_text(
        'name = "recipes"\npreset = "smoke"\nseeds = [0]\ndatasets = ["cifar10"]\n'
        "[set]\ntrain_subset = 1000\nepochs = 2\n"
        '[[grid]]\nattacks = ["badnets", "tiny-uap"]\n'
        'defenses = ["tiny-saliency", "tiny-corner", "tiny-finetune"]\n'
    )
    out = tmp_path / "bench"
    assert main(["bench", str(cfg), "--out", str(out), "--quiet"]) == 0
    cells = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    kinds = {c["defense"]: c["kind"] for c in cells}
    assert kinds == {
        "none": "none",
        "tiny-saliency": "purifier",
        "tiny-corner": "filter",
        "tiny-finetune": "repair",
    }
    assert len(cells) == 8
    html = (out / "report.html").read_text()
    assert "tiny-saliency" in html and "test inputs and purified outputs" in html


def test_purify_gives_a_model_aware_purifier_the_model(tmp_path, capsys):
    from detox.models import build_model, save_checkpoint

    ck = tmp_path / "victim"
    save_checkpoint(build_model("small-cnn", 10, width=0.25, dataset="cifar10", seed=0), ck)
    base = ["purify", "--input", "cifar10", "--defense", "tiny-saliency", "--limit", "8",
            "--quiet"]  # fmt: skip
    # without --model it is refused, naming the option (exit 2: a usage error)
    assert main([*base, "--out", str(tmp_path / "p0")]) == 2
    assert "pass --model CHECKPOINT" in capsys.readouterr().err
    assert not (tmp_path / "p0").exists()
    assert main([*base, "--out", str(tmp_path / "p0"), "--model", str(ck)]) == 0
    TinySaliency.seen.clear()
    assert main([*base, "--out", str(tmp_path / "p1"), "--model", str(ck)]) == 0
    from detox.models import load_checkpoint
    from detox.utils.fingerprint import state_fingerprint

    assert TinySaliency.seen == [state_fingerprint(load_checkpoint(ck, "cpu"))]
    # a purifier that does not use the classifier refuses --model
    assert main(["purify", "--input", "cifar10", "--defense", "median", "--limit", "4",
                 "--quiet", "--out", str(tmp_path / "p2"), "--model", str(ck)]) == 2  # fmt: skip
