"""Hostile and careless input (issue: no traceback, no silent acceptance, nothing
overwritten). Each test runs the command a user would, on real CIFAR-10 data at small
scale, and asserts the exact one-line error, that no output folder (nor a hidden partial
one) is left behind, and that the inputs are byte-for-byte untouched."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from detox.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["--preset", "smoke", "--set", "train_subset=300", "--set", "test_subset=60", "--quiet"]


def digest(folder: Path) -> str:
    """sha256 over every file's relative path, bytes and mode under ``folder``."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode())
        h.update(f.read_bytes())
        h.update(str(f.stat().st_mode).encode())
    return h.hexdigest()


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name)


def run(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def artefact(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "badnets"
    rc = main(["poison", "--dataset", "cifar10", "--attack", "badnets", "--out", str(out), *SMALL])
    assert rc == 0
    return out


# -- 2. outputs that overwrite inputs -----------------------------------------------------


def test_purify_refuses_to_write_over_its_input(artefact, capsys):
    before = digest(artefact)
    for out in (artefact, artefact.parent):  # the input itself, or a folder holding it
        rc, err = run(capsys, "purify", "--input", str(artefact), "--defense", "median",
                      "--out", str(out), "--force", "--quiet")  # fmt: skip
        assert rc == 2
        assert f"--out {out}: would overwrite the input {artefact}; choose another folder" in err
    assert digest(artefact) == before


def test_an_existing_output_needs_force_and_is_then_replaced_whole(artefact, tmp_path, capsys):
    out = tmp_path / "set"
    assert main(["poison", "--attack", "badnets", "--out", str(out), *SMALL]) == 0
    before = digest(out)
    rc, err = run(capsys, "poison", "--attack", "blended", "--out", str(out), *SMALL)
    assert rc == 2 and (
        f"--out {out}: already exists and is not empty; choose a new folder or pass --force" in err
    )
    assert digest(out) == before
    assert main(["poison", "--attack", "blended", "--out", str(out), "--force", *SMALL]) == 0
    names = {p.name for p in out.iterdir()}
    assert "triggered.blended.x.npy" in names
    assert not any("badnets" in n for n in names)  # nothing of the old artefact is left
    assert json.loads((out / "manifest.json").read_text())["attacks"][0]["name"] == "blended"
    assert leftovers(tmp_path) == []
    # --force never empties a folder detox did not write
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    rc, err = run(capsys, "poison", "--attack", "blended", "--out", str(mine), "--force", *SMALL)
    assert rc == 2 and "--force replaces only a folder detox wrote" in err
    assert (mine / "notes.txt").read_text() == "keep me"


# -- 5. partial folders after a failure ------------------------------------------------------


def test_failed_commands_leave_no_run_folder(artefact, tmp_path, capsys):
    before = digest(artefact)
    out = tmp_path / "r"
    rc, err = run(capsys, "run", "--attack", "badnets", "--defense", "nope", "--out", str(out),
                  *SMALL)  # fmt: skip
    assert rc == 2 and "--defense 'nope': unknown defense; expected one of" in err
    rc, err = run(capsys, "purify", "--input", str(artefact), "--diffusion",
                  str(tmp_path / "missing"), "--limit", "2", "--out", str(out), "--quiet")  # fmt: skip
    assert rc == 2 and f"diffusion model '{tmp_path / 'missing'}': no such folder" in err
    rc, err = run(capsys, "scan", "--data", str(artefact), "--defense", "nope", "--out", str(out))
    assert rc == 2 and "unknown detector 'nope'" in err
    assert not out.exists() and leftovers(tmp_path) == []
    assert digest(artefact) == before


# -- 3. values accepted silently -------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,message",
    [
        (["purify", "--input", "cifar10", "--limit", "-5"], "argument --limit: expected an integer >= 1, got -5"),
        (["purify", "--input", "cifar10", "--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got 0"),
        (["train", "--seed", "-1"], "argument --seed: expected an integer >= 0"),
        (["poison", "--attack", "badnets", "--seed", "-1"], "argument --seed: expected an integer >= 0"),
        (["show", "x", "--seed", "-1"], "argument --seed: expected an integer >= 0"),
        (["poison", "--attack", "badnets", "--ratio", "nan"], "argument --ratio: expected a number in (0, 1], got nan"),
        (["diffusion", "train", "--steps", "0"], "argument --steps: expected an integer >= 1, got 0"),
    ],
)  # fmt: skip
def test_options_are_checked_where_declared(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_non_finite_settings_and_divergence(tmp_path, capsys):
    out = tmp_path / "m"
    rc, err = run(capsys, "train", "--out", str(out), *SMALL, "--set", "lr=inf")
    assert rc == 2 and "lr=inf: expected a finite number" in err
    # a learning rate that blows the loss up: stop, say so, save nothing
    rc, err = run(capsys, "train", "--out", str(out), *SMALL, "--set", "lr=1e6")
    assert rc == 2 and "the loss became nan at epoch 1" in err and "lower the learning rate" in err
    assert not out.exists() and leftovers(tmp_path) == []


def test_detox_json_is_strict():
    from detox.utils.io import to_json

    text = to_json({"auroc": float("nan"), "x": [np.float32("inf"), torch.tensor(1.5)]})
    assert json.loads(text) == {"auroc": None, "x": [None, 1.5]}
    assert "NaN" not in text and "Infinity" not in text


def test_label_values_are_bounded(tmp_path, capsys):
    x = np.zeros((10, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "big.npz", x=x, y=np.array([0] * 9 + [2**40]))
    rc, err = run(capsys, "train", "--dataset", str(tmp_path / "big.npz"), "--out",
                  str(tmp_path / "o"), "--preset", "smoke")  # fmt: skip
    assert rc == 2 and "[y]: label 1099511627776; labels must be class indices below 100,000" in err
    np.savez(tmp_path / "named.npz", x=x, y=np.array([0] * 9 + [3]), classes=np.array(["a", "b"]))
    rc, err = run(capsys, "train", "--dataset", str(tmp_path / "named.npz"), "--out",
                  str(tmp_path / "o"), "--preset", "smoke")  # fmt: skip
    assert rc == 2 and "[y]: label 3 but 'classes' names only 2 classes" in err
    assert not (tmp_path / "o").exists()


def test_trusted_examples_and_suites_must_apply(artefact, tmp_path, capsys):
    rc, err = run(capsys, "scan", "--data", str(artefact), "--defense", "ultraclean",
                  "--trusted", "1,2,3", "--out", str(tmp_path / "s"), *SMALL)  # fmt: skip
    assert rc == 2 and "--trusted: ultraclean takes no trusted examples" in err
    rc, err = run(capsys, "poison", "--dataset", "cifar10", "--suite", "badloss-gtsrb",
                  "--out", str(tmp_path / "p"), *SMALL)  # fmt: skip
    assert rc == 2 and (
        "suite 'badloss-gtsrb' is BaDLoss's setting for gtsrb, not for cifar10; use "
        "'badloss-cifar10'" in err
    )
    assert not (tmp_path / "s").exists() and not (tmp_path / "p").exists()


# -- 4. errors of lower layers, as one line ------------------------------------------------


def test_damaged_artefacts_and_checkpoints_are_one_line_errors(artefact, tmp_path, capsys):
    import shutil

    out = tmp_path / "o"
    bad = tmp_path / "truncated"
    shutil.copytree(artefact, bad)
    (bad / "manifest.json").write_text((artefact / "manifest.json").read_text()[:200])
    rc, err = run(capsys, "scan", "--data", str(bad), "--defense", "ultraclean", "--out", str(out))
    assert rc == 2 and f"{bad / 'manifest.json'}: not valid JSON" in err
    objs = tmp_path / "objects"
    shutil.copytree(artefact, objs)
    np.save(objs / "y.npy", np.array([{"a": 1}] * 300, dtype=object), allow_pickle=True)
    m = json.loads((objs / "manifest.json").read_text())
    m["arrays"]["y"]["sha256"] = hashlib.sha256((objs / "y.npy").read_bytes()).hexdigest()
    (objs / "manifest.json").write_text(json.dumps(m))
    rc, err = run(capsys, "scan", "--data", str(objs), "--defense", "ultraclean", "--out", str(out))
    assert rc == 2 and (
        f"{objs / 'y.npy'}: array 'y' cannot be loaded (it holds pickled Python objects, "
        "which are never loaded)" in err
    )
    # a checkpoint: truncated weights, and weights that do not fit model.json
    ck = tmp_path / "ck"
    assert main(["train", "--out", str(ck), *SMALL, "--set", "epochs=1"]) == 0
    trunc = tmp_path / "ck_trunc"
    shutil.copytree(ck, trunc)
    (trunc / "model.safetensors").write_bytes((ck / "model.safetensors").read_bytes()[:1000])
    rc, err = run(capsys, "eval", "--checkpoint", str(trunc), "--out", str(out))
    assert rc == 2 and f"{trunc / 'model.safetensors'}: not a readable safetensors file" in err
    other = tmp_path / "ck_other"
    shutil.copytree(ck, other)
    meta = json.loads((other / "model.json").read_text())
    meta["model"]["num_classes"] = 7
    (other / "model.json").write_text(json.dumps(meta))
    rc, err = run(capsys, "eval", "--checkpoint", str(other), "--out", str(out))
    assert rc == 2 and "the weights do not fit the model" in err and "size mismatch" in err
    # an --out that is a file
    f = tmp_path / "file"
    f.write_text("x")
    rc, err = run(capsys, "eval", "--checkpoint", str(ck), "--out", str(f))
    assert rc == 2 and f"--out {f}: is a file; expected a folder (new or empty)" in err
    assert f.read_text() == "x" and not out.exists() and leftovers(tmp_path) == []


# -- 7. weights that are code ------------------------------------------------------------------


def test_pickled_diffusion_weights_need_an_opt_in(artefact, tmp_path, capsys, monkeypatch):
    from detox.diffusion import packaged_diffusion

    src = Path(packaged_diffusion("cifar10"))
    d = tmp_path / "bin-model"
    (d / "unet").mkdir(parents=True)
    (d / "unet" / "config.json").write_text((src / "unet" / "config.json").read_text())
    marker = tmp_path / "ran"
    # a pickle that would run code if loaded with plain pickle / torch.load(weights_only=False)
    (d / "unet" / "diffusion_pytorch_model.bin").write_bytes(
        b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    )
    monkeypatch.delenv("DETOX_ALLOW_PICKLE", raising=False)
    out = tmp_path / "p"
    rc, err = run(capsys, "purify", "--input", str(artefact), "--diffusion", str(d), "--limit",
                  "2", "--out", str(out), "--quiet")  # fmt: skip
    assert rc == 2 and "its weights (diffusion_pytorch_model.bin) are a pickle" in err
    assert "DETOX_ALLOW_PICKLE=1" in err
    # opted in: read with weights_only=True, which refuses the code-running pickle
    monkeypatch.setenv("DETOX_ALLOW_PICKLE", "1")
    rc, err = run(capsys, "purify", "--input", str(artefact), "--diffusion", str(d), "--limit",
                  "2", "--out", str(out), "--quiet")  # fmt: skip
    assert rc == 2 and "Traceback" not in err
    assert f"diffusion model '{d}': cannot load the UNet" in err
    assert not marker.exists() and not out.exists()


# -- 6. misleading figures ----------------------------------------------------------------------


def test_accuracy_without_a_test_split_is_not_called_a_test(cifar_small, tmp_path, capsys):
    x = cifar_small.x[:200].permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "one.npz", x=x, y=cifar_small.y[:200].numpy())
    out = tmp_path / "m"
    rc, err = run(capsys, "train", "--dataset", str(tmp_path / "one.npz"), "--out", str(out),
                  "--preset", "smoke", "--quiet", "--set", "epochs=1")  # fmt: skip
    assert rc == 0 and "has no test split" in err
    summary = json.loads((out / "summary.json").read_text())
    assert "test_accuracy" not in summary and "accuracy_on_training_images" in summary
    assert "the accuracy is measured on the training images" in summary["warning"]


# -- 8. file modes follow the umask --------------------------------------------------------------


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_output_files_follow_the_umask(umask, mode, tmp_path):
    from detox.utils.io import atomic_write_json

    old = os.umask(umask)
    try:
        p = atomic_write_json(tmp_path / "a.json", {"a": 1})
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == mode


def test_a_cleaned_set_can_be_trained_on(artefact, tmp_path, capsys):
    """What one command writes, the next reads: the kept set of `detox scan` trains a model
    with `detox train --dataset`, evaluated on the clean test set the artefact carries."""
    from detox.data import PoisonedSet

    scan = tmp_path / "scan"
    rc = main(["scan", "--data", str(artefact), "--defense", "ultraclean", "--out", str(scan),
               *SMALL])  # fmt: skip
    assert rc == 0
    kept = PoisonedSet.load(scan / "kept")
    model = tmp_path / "model"
    rc = main(["train", "--dataset", str(scan / "kept"), "--out", str(model), *SMALL,
               "--set", "epochs=1"])  # fmt: skip
    assert rc == 0
    summary = json.loads((model / "summary.json").read_text())
    assert summary["n_train"] == min(300, len(kept)) and summary["n_test"] == 60
    assert "test_accuracy" in summary  # the artefact's own clean test set is held out
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["data_source"]["train"]["source_kind"] == "poisoned-set"
    assert json.loads((model / "model.json").read_text())["model"]["dataset"] == "cifar10"


def test_attacks_are_not_measured_on_training_images(cifar_small, tmp_path, capsys):
    """poison / run / bench need held-out images: a dataset without a test split is refused
    (its "test" images would be training images)."""
    x = cifar_small.x[:100].permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "one.npz", x=x, y=cifar_small.y[:100].numpy())
    out = tmp_path / "p"
    rc, err = run(capsys, "poison", "--dataset", str(tmp_path / "one.npz"), "--attack",
                  "badnets", "--out", str(out), "--preset", "smoke")  # fmt: skip
    assert rc == 2 and "one.npz: no test split" in err and "measured on training images" in err
    assert not out.exists()
