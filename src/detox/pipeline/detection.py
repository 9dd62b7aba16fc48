"""Detectors: probes, score -> cut (:func:`detect`), its files (:func:`write_detection`),
detection metrics, and cleanse-and-retrain. ``detox scan`` and the pipeline share them."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detox.config import ConfigError
from detox.data import PoisonedSet
from detox.pipeline.evaluation import evaluate_backdoor
from detox.pipeline.victims import train_classifier
from detox.training import TrainConfig


def select_clean_probes(pset: PoisonedSet, n: int, seed: int, class_balanced: bool = False):
    """A seeded sample of ``n`` truly clean examples, as the BaDLoss paper's benchmarks do
    (the defender vouches for them). Returns sorted indices into ``pset``."""
    from detox.defenses.probes import select_probes

    return select_probes(
        pset.y_true, n, seed, clean_mask=~pset.is_poisoned, class_balanced=class_balanced
    )


def detection_report(
    scores: np.ndarray,
    removed: np.ndarray,
    pset: PoisonedSet,
    protected: np.ndarray | None = None,
    parts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Detection metrics overall and per attack (each attack's poisons vs all clean
    examples), and the removal rate of every class (true labels).

    ``parts`` (name -> per-example values, e.g. UltraClean's two denoiser distances, which
    sum to its score) adds ``part_auroc``: the AUROC of each part alone, per attack.
    Examples a detector did not score (score -inf, e.g. UltraClean's ``score_scope``) are
    left out of every figure but the removal rates."""
    from detox.metrics import detection_metrics, per_class_removal

    aid = pset.attack_id.numpy()
    consider = np.ones(len(scores), bool) if protected is None else ~protected
    consider = consider & np.isfinite(np.asarray(scores, dtype=np.float64))
    out: dict[str, Any] = {
        "overall": detection_metrics(scores[consider], aid[consider] >= 0, removed[consider])
    }
    out["per_attack"] = {}
    if parts:
        out["part_auroc"] = {}
    for i, a in enumerate(pset.attacks):
        sel = consider & ((aid == i) | (aid < 0))
        out["per_attack"][a["name"]] = detection_metrics(scores[sel], aid[sel] == i, removed[sel])
        if parts:
            out["part_auroc"][a["name"]] = {
                k: detection_metrics(np.asarray(v, dtype=np.float64)[sel], aid[sel] == i)["auroc"]
                for k, v in parts.items()
            }
    out["per_class_removal"] = per_class_removal(removed, pset.y_true, pset.num_classes)
    out["per_class_count"] = np.bincount(pset.y_true.numpy(), minlength=pset.num_classes).tolist()
    return out


@dataclasses.dataclass
class Detection:
    """What a detector found: one score per example (higher = more suspicious), the cut,
    the probes it was given (``protected``, never removed), the detection metrics when
    the set carries ground truth, and the detector's own artifacts (named arrays)."""

    scores: np.ndarray
    removed: np.ndarray
    protected: np.ndarray | None
    report: dict[str, Any] | None
    score_seconds: float
    artifacts: dict[str, Any]

    @property
    def n_kept(self) -> int:
        return int((~self.removed).sum())


def choose_probes(
    detector: Any, pset: PoisonedSet, seed: int, trusted: np.ndarray | None = None
) -> np.ndarray | None:
    """The trusted clean examples a detector is given (None when it takes none): a seeded
    sample of ``trusted`` indices when the user vouches for some, else of the truly clean
    examples of a set with ground truth (as the BaDLoss paper's benchmarks do)."""
    if not getattr(detector, "needs_probes", False):
        return None
    n = int(detector.config.n_probes)
    balanced = bool(getattr(detector.config, "class_balanced_probes", False))
    if trusted is not None:
        from detox.defenses.probes import select_probes

        return select_probes(pset.y, min(n, len(trusted)), seed, trusted=trusted,
                             class_balanced=balanced)  # fmt: skip
    if pset.attacks:
        return select_clean_probes(pset, n, seed, class_balanced=balanced)
    raise ConfigError(f"{detector.name} needs trusted clean examples: pass --trusted FILE_OR_LIST")


def detect(
    pset: PoisonedSet,
    detector: Any,
    tcfg: TrainConfig,
    device: torch.device | str,
    model: nn.Module | None = None,
    probes: np.ndarray | None = None,
    seed: int = 0,
    progress: bool = True,
    model_config: TrainConfig | None = None,
) -> Detection:
    """Score every example of ``pset`` with ``detector`` and cut (``detox scan`` and the
    first half of :func:`cleanse_and_retrain`). ``model_config``: the config that trained
    ``model`` when detox trained it (None: a checkpoint from elsewhere)."""
    import time

    from detox.defenses.detectors import DetectorContext

    if detector.needs_model and model is None:
        raise ConfigError(f"detector {detector.name!r} needs a model trained on the poisoned set")
    if detector.needs_probes and probes is None:
        raise ConfigError(f"detector {detector.name!r} needs trusted clean probes")
    trusted = None
    if probes is not None:  # the probes as images too (STRIP blends with them)
        trusted = pset.subset(torch.from_numpy(np.asarray(probes, dtype=np.int64))).as_dataset()
    ctx = DetectorContext.for_set(
        pset,
        model=model if detector.needs_model else None,
        probes=probes,
        trusted=trusted,
        train_config=tcfg,
        model_config=model_config if detector.needs_model else None,
        device=torch.device(device),
        seed=seed,
        progress=progress,
    )
    t0 = time.perf_counter()
    scores = np.asarray(detector.score(pset.as_dataset(), ctx), dtype=np.float64)
    score_seconds = time.perf_counter() - t0
    if scores.shape != (len(pset),):
        raise ConfigError(
            f"detector {detector.name!r} returned {scores.shape} scores for {len(pset)} examples"
        )
    removed = np.asarray(detector.cut(scores, ctx), dtype=bool)
    protected = None
    if probes is not None:
        protected = np.zeros(len(pset), bool)
        protected[np.asarray(probes, dtype=np.int64)] = True
    report = (
        detection_report(scores, removed, pset, protected, ctx.artifacts.get("score_parts"))
        if pset.attacks
        else None
    )
    return Detection(scores, removed, protected, report, round(score_seconds, 2), ctx.artifacts)


def write_detection(
    out_dir: str | os.PathLike,
    name: str,
    detector: Any,
    pset: PoisonedSet,
    found: Detection,
    scores_file: str,
) -> dict[str, Path]:
    """A detection's files: the per-example scores CSV and, with ground truth, the score
    histogram, the ROC and the detector's own figures. Returns the figures written
    (caption -> path)."""
    out = Path(out_dir)
    write_scores(out / scores_file, pset, found.scores, found.removed, found.protected)
    if found.report is None:
        return {}
    hist, roc = detector_figures(
        out, name, pset, {"scores": found.scores, "removed": found.removed}
    )
    figures = {"scores, clean vs poisoned": hist, "ROC per attack": roc}
    plot = getattr(detector, "plot_artifacts", None)
    if plot is not None:
        figures.update((plot(found.artifacts, pset, out) or {}).get("figures", {}))
    return figures


def cleanse_and_retrain(
    pset: PoisonedSet,
    detector: Any,
    tcfg: TrainConfig,
    device: torch.device | str,
    victim: nn.Module | None = None,
    probes: np.ndarray | None = None,
    seed: int = 0,
    progress: bool = True,
    cache: bool = True,
) -> dict[str, Any]:
    """Score every example with ``detector`` (``victim``: trained on ``pset`` with
    ``tcfg``), cut, retrain from scratch on what is kept, and evaluate. Returns ``found`` (the :class:`Detection`), the retrained ``model``, its
    ``evaluation`` and its training record (``retrain``)."""
    found = detect(pset, detector, tcfg, device, victim, probes, seed, progress, tcfg)
    kept = pset.subset(torch.from_numpy(~found.removed))
    dataset = pset.source.get("dataset") or pset.source.get("name")
    model, info = train_classifier(
        kept.x, kept.y, kept.classes, tcfg, device, dataset, cache, desc="retrain"
    )
    return {
        "found": found,
        "model": model,
        "retrain": info,
        "evaluation": evaluate_backdoor(model, pset),
    }


def write_scores(path: str | os.PathLike, pset: PoisonedSet, scores, removed, protected=None):
    """Per-example scores as CSV: index, score, kept, probe, label, true label, attack."""
    import csv
    import io

    from detox.utils.io import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["index", "score", "kept", "probe", "label", "true_label", "attack_id"])
    prot = protected if protected is not None else np.zeros(len(scores), bool)
    for i, (s, r, p, y, yt, a) in enumerate(
        zip(scores, removed, prot, pset.y.tolist(), pset.y_true.tolist(), pset.attack_id.tolist())
    ):
        w.writerow([i, f"{s:.6g}", int(not r), int(p), y, yt, a])
    atomic_write_text(path, buf.getvalue())


def detector_figures(
    out_dir: str | os.PathLike, name: str, pset: PoisonedSet, result: dict
) -> list[Path]:
    """Score histogram and ROC of a detector run into ``out_dir``."""
    from detox.plots.detection import roc_plot, score_histogram

    out = Path(out_dir)
    scored = np.isfinite(np.asarray(result["scores"], dtype=np.float64))  # -inf: not scored
    aid = pset.attack_id.numpy()[scored]
    s, r = np.asarray(result["scores"])[scored], np.asarray(result["removed"])[scored]
    cut = float(s[r].min()) if r.any() else None
    return [
        score_histogram(s, aid, pset.attack_names, out / f"{name}_hist.png", f"{name} scores", cut),
        roc_plot(s, aid, pset.attack_names, out / f"{name}_roc.png", f"{name} ROC"),
    ]
