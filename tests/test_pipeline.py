"""End-to-end: poison -> victim -> defense -> metrics, at smoke scale on real CIFAR-10."""

import csv
import json

import numpy as np
import pytest

from detox.cli import main
from detox.data import PoisonedSet


@pytest.fixture(scope="module")
def artefact(tmp_path_factory):
    out = tmp_path_factory.mktemp("art")
    rc = main(["poison", "--dataset", "cifar10", "--attack", "badnets:ratio=0.1", "--preset",
               "smoke", "--out", str(out)])  # fmt: skip
    assert rc == 0
    return out


def test_scan_ultraclean_writes_scores_kept_set_and_figures(artefact, tmp_path):
    out = tmp_path / "scan"
    rc = main(["scan", "--data", str(artefact), "--defense", "ultraclean", "--preset", "smoke",
               "--out", str(out), "--quiet"])  # fmt: skip
    assert rc == 0
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 500 and set(rows[0]) >= {"index", "score", "kept"}
    removed = sum(r["kept"] == "0" for r in rows)
    assert removed == 150  # 30% of 500, exactly
    kept = PoisonedSet.load(out / "kept")
    assert len(kept) == 350
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_removed"] == 150
    auroc = summary["detection"]["overall"]["auroc"]
    assert 0.0 <= auroc <= 1.0
    assert (out / "ultraclean_hist.png").is_file() and (out / "ultraclean_roc.png").is_file()


def test_run_with_detectors_reports_detection_and_retrained_metrics(tmp_path):
    out = tmp_path / "run"
    rc = main(["run", "--dataset", "cifar10", "--attack", "badnets", "--defense",
               "ultraclean,badloss", "--preset", "smoke", "--out", str(out), "--quiet"])  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["evaluations"]) == {"no defense", "ultraclean", "badloss"}
    bl = summary["defenses"]["badloss"]
    # BaDLoss removes 40% of the set and never a probe
    scores = list(csv.DictReader((out / "badloss_scores.csv").open()))
    probes = [r for r in scores if r["probe"] == "1"]
    assert probes and all(r["kept"] == "1" for r in probes)
    assert sum(r["kept"] == "0" for r in scores) == round(0.4 * 500)
    assert bl["n_kept"] == 300
    det = summary["detection"]["ultraclean"]["per_attack"]["badnets"]
    assert {"auroc", "tpr", "fpr"} <= set(det)
    parts = summary["detection"]["ultraclean"]["part_auroc"]["badnets"]  # each denoiser alone
    assert set(parts) == {"median", "nlm"} and all(0 <= v <= 1 for v in parts.values())
    table = (out / "results.md").read_text()
    assert "ultraclean ASR" in table and "badloss AUROC" in table
    assert (out / "badloss_trajectories.png").is_file() or any(out.glob("badloss*traj*.png"))


def test_run_with_sampdetox(tmp_path):
    diff = tmp_path / "diff"
    assert main(["diffusion", "train", "--dataset", "cifar10", "--preset", "smoke", "--out",
                 str(diff), "--quiet", "--set", "steps=2"]) == 0  # fmt: skip
    out = tmp_path / "run"
    rc = main(["run", "--dataset", "cifar10", "--attack", "badnets", "--defense", "sampdetox",
               "--preset", "smoke", "--diffusion", str(diff), "--out", str(out), "--quiet",
               "--set", "test_subset=40", "--set", "test_limit=20"])  # fmt: skip
    assert rc == 0
    ev = json.loads((out / "summary.json").read_text())["evaluations"]["sampdetox"]
    assert ev["n_test"] == 40 and ev["attacks"]["badnets"]["n"] == 20
    assert np.isfinite(ev["ca"])
    assert (out / "sampdetox_samples.png").is_file()  # inputs and purified outputs
    # detox purify on the poisoned-set artefact: purified clean and triggered images
    pur = tmp_path / "pur"
    rc = main(["purify", "--input", str(artefact_dir(tmp_path)), "--defense", "sampdetox",
               "--defense-preset", "smoke", "--diffusion", str(diff), "--limit", "3",
               "--out", str(pur), "--quiet"])  # fmt: skip
    assert rc == 0 and (pur / "preview.png").is_file()
    back = PoisonedSet.load(pur / "purified")
    assert len(back) == 3 and len(back.triggered["badnets"]) == 3
    assert back.source["purified_by"] == "sampdetox"


def artefact_dir(tmp_path):
    out = tmp_path / "small-art"
    assert main(["poison", "--dataset", "cifar10", "--attack", "badnets", "--preset", "smoke",
                 "--out", str(out)]) == 0  # fmt: skip
    return out


def test_detection_report_part_auroc(cifar_small):
    """Each part of a score is ranked alone: the score itself as a part gives the score's
    AUROC, its negation one minus it."""
    from detox.attacks.poison import poison
    from detox.pipeline import detection_report

    pset = poison(cifar_small, "badnets", seed=0)
    scores = np.random.default_rng(0).random(len(pset)) + pset.is_poisoned.numpy() * 0.3
    removed = scores > np.quantile(scores, 0.7)
    rep = detection_report(scores, removed, pset, parts={"all": scores, "neg": -scores})
    auroc = rep["per_attack"]["badnets"]["auroc"]
    assert 0.6 < auroc < 1.0
    assert rep["part_auroc"]["badnets"]["all"] == pytest.approx(auroc, abs=1e-12)
    assert rep["part_auroc"]["badnets"]["neg"] == pytest.approx(1 - auroc, abs=1e-12)
    assert "part_auroc" not in detection_report(scores, removed, pset)
