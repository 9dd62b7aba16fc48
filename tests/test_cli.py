import json

import pytest

from detox.cli import main


def test_data_info_cifar10(capsys):
    assert main(["data", "info", "cifar10", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    text = json.dumps(info)
    assert "50000" in text and "10000" in text
    assert info["num_classes"] == 10


def test_unknown_names_are_one_line_errors(capsys, tmp_path):
    rc = main(["train", "--dataset", "cifar10", "--model", "resnet999", "--preset", "smoke",
               "--out", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "unknown model 'resnet999'" in err and "resnet18" in err
    assert main(["data", "info", "imagenet-2099"]) == 2
    assert "unknown dataset" in capsys.readouterr().err


def test_train_and_eval_smoke(tmp_path, capsys):
    out = tmp_path / "m"
    rc = main(["train", "--dataset", "cifar10", "--preset", "smoke", "--out", str(out),
               "--quiet", "--set", "epochs=1"])  # fmt: skip
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["model"] == "small-cnn" and cfg["train"]["epochs"] == 1
    assert cfg["data"]["train_subset"] == 500
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["n_train"] == 500
    assert (out / "model.safetensors").is_file()
    assert main(["eval", "--checkpoint", str(out), "--dataset", "cifar10", "--quiet"]) == 0
    ev = json.loads((out / "eval-cifar10" / "summary.json").read_text())
    assert ev["n_test"] == 10000 and len(ev["per_class_accuracy"]) == 10


def test_bad_override_is_refused(tmp_path, capsys):
    rc = main(["train", "--preset", "smoke", "--out", str(tmp_path), "--set", "nonsense=1"])
    assert rc == 2 and "nonsense" in capsys.readouterr().err


@pytest.mark.slow
def test_poison_show_and_run_smoke(tmp_path, capsys):
    art = tmp_path / "art"
    rc = main(["poison", "--dataset", "cifar10", "--attack", "badnets,blended", "--preset",
               "smoke", "--out", str(art)])  # fmt: skip
    assert rc == 0
    manifest = json.loads((art / "manifest.json").read_text())
    assert [a["name"] for a in manifest["attacks"]] == ["badnets", "blended"]
    assert main(["show", str(art)]) == 0 and (art / "samples.png").stat().st_size > 10_000
    run = tmp_path / "run"
    rc = main(["run", "--dataset", "cifar10", "--attack", "badnets", "--preset", "smoke",
               "--out", str(run), "--quiet"])  # fmt: skip
    assert rc == 0
    summary = json.loads((run / "summary.json").read_text())
    ev = summary["evaluations"]["no defense"]
    assert set(ev["attacks"]) == {"badnets"} and 0 <= ev["attacks"]["badnets"]["asr"] <= 1
    assert "badnets" in (run / "results.md").read_text()
