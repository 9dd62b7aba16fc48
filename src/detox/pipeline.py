"""The experiment pipeline shared by every command and the benchmark.

    data -> poison (attacks, seeded) -> train the victim (cached) -> evaluate CA / PA / ASR
         -> [detector: score -> cut -> retrain on the kept examples -> evaluate + detection]
         -> [purifier: purify test inputs -> evaluate]

Each step is a function so that commands, benchmarks and tests compose them. Victims are
cached by a content hash of their training data, training config and code version: a
victim is trained once and reused by every defense that needs it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
import typing
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detox import __version__
from detox.config import ConfigError, DataConfig, asdict, make_config
from detox.data import PoisonedSet, load_splits
from detox.data.paths import cache_dir
from detox.metrics import attack_success_rate, clean_accuracy, poisoned_accuracy
from detox.models import build_model, load_checkpoint, save_checkpoint
from detox.training import TrainConfig, predict, train
from detox.utils.device import resolve_device
from detox.utils.io import atomic_write_json, read_json


@dataclasses.dataclass
class ExperimentConfig:
    """Settings of the pipeline itself (data and training have their own configs)."""

    test_limit: int | None = None  # triggered test images per attack; None = all eligible
    cache_victims: bool = True  # reuse a victim trained on the same data and config

    PRESETS: typing.ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"test_limit": 200},
        "quick": {},
        "paper": {},
    }


# ---------------------------------------------------------------------------------------
# poisoning


def make_poisoned_set(
    data_cfg: DataConfig,
    attacks: Any,
    seed: int,
    data_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    test_limit: int | None = None,
) -> PoisonedSet:
    """Load the data of ``data_cfg`` and poison it with ``attacks`` (None/"" = no attack)."""
    from detox.attacks import poison
    from detox.attacks.suites import check_suite_dataset

    names = [attacks] if isinstance(attacks, str) else attacks if isinstance(attacks, list) else []
    for token in names:
        if isinstance(token, str):
            for part in token.split(","):
                check_suite_dataset(part.strip(), data_cfg.dataset)
    train_ds, test_ds = load_splits(data_cfg, data_dir)
    if not attacks:
        return PoisonedSet.from_clean(train_ds, seed=seed, test=test_ds)
    return poison(train_ds, attacks, seed=seed, test=test_ds, device=device, test_limit=test_limit)


# ---------------------------------------------------------------------------------------
# victims


def _code_version() -> str:
    """Digest of the code a trained model depends on: the training loop, every model module
    and every detox module they import (transitively), plus the library versions."""
    import detox.models as models_pkg
    import detox.training as training_mod
    from detox.utils.fingerprint import code_fingerprint

    models = [f"detox.models.{f.stem}" for f in Path(models_pkg.__file__).parent.glob("*.py")]
    return __version__ + ":" + code_fingerprint(training_mod, *models)[:16]


def victim_key(x: torch.Tensor, y: torch.Tensor, tcfg: TrainConfig, extra: Any = None) -> str:
    """Content hash of (training images, labels, training config, code version, ``extra``:
    the dataset, its normalisation and the runtime)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x.cpu().numpy()).tobytes())
    h.update(np.ascontiguousarray(y.cpu().numpy()).tobytes())
    cfg = {k: v for k, v in asdict(tcfg).items() if k != "progress"}
    h.update(repr(sorted(cfg.items())).encode())
    h.update(repr(extra).encode())
    h.update(_code_version().encode())
    return h.hexdigest()[:24]


def train_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    classes: list[str],
    tcfg: TrainConfig,
    device: torch.device | str,
    dataset: str | None = None,
    cache: bool = True,
    desc: str = "victim",
) -> tuple[nn.Module, dict[str, Any]]:
    """Train (or load from the victim cache) a classifier on uint8 images ``x``."""
    from detox.models.base import normalization_for
    from detox.utils.fingerprint import runtime_fingerprint

    dev = resolve_device(device) if isinstance(device, str) else device
    key = victim_key(x, y, tcfg, (dataset, normalization_for(dataset), runtime_fingerprint(dev)))
    folder = cache_dir() / "victims" / key
    if cache and (folder / "model.safetensors").is_file() and (folder / "train.json").is_file():
        info = read_json(folder / "train.json")
        info["cached"] = True
        return load_checkpoint(folder, device), info
    model = build_model(
        tcfg.model,
        len(classes),
        width=tcfg.width,
        in_channels=x.shape[1],
        dataset=dataset,
        seed=tcfg.seed,
    )
    res = train(model, x, y, tcfg, device=device, desc=desc)
    info = {
        "key": key,
        "train_seconds": round(res.seconds, 2),
        "images_per_second": round(res.images_per_second, 1),
        "history": res.history,
        "cached": False,
    }
    if cache:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{key}."))
        try:
            save_checkpoint(res.model, tmp, extra={"classes": classes, "train": asdict(tcfg)})
            atomic_write_json(tmp / "train.json", info)
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return res.model, info


def train_victim(
    pset: PoisonedSet, tcfg: TrainConfig, device: torch.device | str, cache: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """The victim: a classifier trained on the poisoned set as the attacker left it."""
    dataset = pset.source.get("dataset") or pset.source.get("name")
    return train_classifier(pset.x, pset.y, pset.classes, tcfg, device, dataset, cache)


# ---------------------------------------------------------------------------------------
# evaluation


def evaluate_backdoor(
    model: nn.Module,
    pset: PoisonedSet,
    transform: typing.Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 512,
) -> dict[str, Any]:
    """CA on the clean test set; ASR and PA on each attack's triggered test set.

    ``transform`` maps uint8 test images to uint8 or float inputs (a purifier), applied to
    clean and triggered images alike.
    """
    if pset.test is None:
        raise ConfigError("evaluate: the poisoned set carries no test set")

    def _pred(x: torch.Tensor) -> torch.Tensor:
        if transform is not None:
            x = transform(x)
        return predict(model, x, batch_size)

    out: dict[str, Any] = {
        "ca": clean_accuracy(_pred(pset.test.x), pset.test.y),
        "n_test": len(pset.test),
        "attacks": {},
    }
    for name, t in pset.triggered.items():
        p = _pred(t.x)
        out["attacks"][name] = {
            "asr": attack_success_rate(p, t.y_target, t.y_true),
            "pa": poisoned_accuracy(p, t.y_true, t.y_target),
            "n": len(t),
        }
    return out


def resolve_configs(
    preset: str, dataset: str, seed: int, overrides: dict[str, Any] | None = None
) -> tuple[DataConfig, TrainConfig, ExperimentConfig]:
    """Data, training and experiment configs of ``preset`` with ``overrides`` applied.

    Each override key must name a setting of one of the three configs.
    """
    from detox.config import split_overrides

    over = dict(overrides or {})
    configs = []
    used: set[str] = set()
    for cls, extra in (
        (DataConfig, {"dataset": dataset, "seed": seed}),
        (TrainConfig, {"seed": seed}),
        (ExperimentConfig, {}),
    ):
        mine = split_overrides(cls, over)
        used |= set(mine)
        configs.append(make_config(cls, preset, **{**extra, **mine}))
    unknown = set(over) - used
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    return configs[0], configs[1], configs[2]


# ---------------------------------------------------------------------------------------
# training-set defenses: score -> cut -> retrain -> evaluate


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
    sum to its score) adds ``part_auroc``: the AUROC of each part alone, per attack."""
    from detox.metrics import detection_metrics, per_class_removal

    aid = pset.attack_id.numpy()
    consider = np.ones(len(scores), bool) if protected is None else ~protected
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
    if not detector.needs_probes:
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
) -> Detection:
    """Score every example of ``pset`` with ``detector`` and cut (``detox scan`` and the
    first half of :func:`cleanse_and_retrain`)."""
    import time

    from detox.defenses.detectors import DetectorContext

    if detector.needs_model and model is None:
        raise ConfigError(f"detector {detector.name!r} needs a model trained on the poisoned set")
    if detector.needs_probes and probes is None:
        raise ConfigError(f"detector {detector.name!r} needs trusted clean probes")
    ctx = DetectorContext.for_set(
        pset,
        model=model if detector.needs_model else None,
        probes=probes,
        train_config=tcfg,
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
) -> None:
    """A detection's files: the per-example scores CSV and, with ground truth, the score
    histogram, the ROC and the detector's own figures."""
    out = Path(out_dir)
    write_scores(out / scores_file, pset, found.scores, found.removed, found.protected)
    if found.report is None:
        return
    detector_figures(out, name, pset, {"scores": found.scores, "removed": found.removed})
    plot = getattr(detector, "plot_artifacts", None)
    if plot is not None:
        plot(found.artifacts, pset, out)


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
    """Score every example with ``detector``, cut, retrain from scratch on what is kept,
    and evaluate. Returns scores, the removal mask, detection metrics, the retrained
    model's evaluation and the detector's artifacts."""
    found = detect(pset, detector, tcfg, device, victim, probes, seed, progress)
    kept = pset.subset(torch.from_numpy(~found.removed))
    dataset = pset.source.get("dataset") or pset.source.get("name")
    model, info = train_classifier(
        kept.x, kept.y, kept.classes, tcfg, device, dataset, cache, desc="retrain"
    )
    return {
        "scores": found.scores,
        "removed": found.removed,
        "protected": found.protected,
        "detection": found.report,
        "score_seconds": found.score_seconds,
        "n_kept": found.n_kept,
        "retrain": info,
        "evaluation": evaluate_backdoor(model, pset),
        "artifacts": found.artifacts,
        "model": model,
        "found": found,
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
    aid = pset.attack_id.numpy()
    s, r = result["scores"], result["removed"]
    cut = float(s[r].min()) if r.any() else None
    return [
        score_histogram(s, aid, pset.attack_names, out / f"{name}_hist.png", f"{name} scores", cut),
        roc_plot(s, aid, pset.attack_names, out / f"{name}_roc.png", f"{name} ROC"),
    ]


def run_defense(
    name: str,
    preset: str,
    pset: PoisonedSet,
    victim: nn.Module,
    tcfg: TrainConfig,
    device: torch.device | str,
    seed: int,
    out_dir: str | os.PathLike,
    progress: bool = True,
    cache: bool = True,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one defense by name against ``victim`` / ``pset`` and write its outputs.

    ``overrides`` are settings of the defense's own config (e.g. ``diffusion=PATH``).

    Detectors: score -> cut -> retrain -> evaluate, scores CSV and figures. Purifiers:
    evaluate the victim on purified test inputs and draw ``<name>_samples.png`` (inputs
    and purified outputs). Returns the evaluation (and detection
    metrics for detectors) as plain data.
    """
    from detox.defenses.detectors import DETECTORS, build_detector

    if name in DETECTORS:
        det = build_detector(name, preset, **(overrides or {}))
        probes = choose_probes(det, pset, seed)
        res = cleanse_and_retrain(
            pset, det, tcfg, device, victim, probes, seed, progress=progress, cache=cache
        )
        write_detection(out_dir, name, det, pset, res["found"], f"{name}_scores.csv")
        return {
            "kind": "detector",
            "config": asdict(det.config),
            "evaluation": res["evaluation"],
            "detection": res["detection"],
            "n_kept": res["n_kept"],
            "score_seconds": res["score_seconds"],
            "retrain": res["retrain"],
        }
    try:
        from detox.defenses.purifiers import PURIFIERS, build_purifier
    except ImportError:  # pragma: no cover - purifiers not installed
        PURIFIERS = None  # type: ignore[assignment]
    if PURIFIERS is not None and name in PURIFIERS:
        pur = build_purifier(name, preset, **(overrides or {}))
        pur.use_dataset_defaults(pset.source.get("dataset") or pset.source.get("name"))
        res = purified_evaluation(pur, victim, pset, device, seed, progress, cache=cache)
        purification_samples(pur, pset, Path(out_dir) / f"{name}_samples.png", device, seed)
        return res
    valid = DETECTORS.names() + (PURIFIERS.names() if PURIFIERS is not None else [])
    raise ConfigError(f"unknown defense {name!r}; valid defenses: {', '.join(sorted(valid))}")


def purification_samples(
    purifier: Any,
    pset: PoisonedSet,
    path: str | os.PathLike,
    device: torch.device | str,
    seed: int,
) -> Path:
    """Clean and triggered test images (4 of each, 12 at most) before and after ``purifier``."""
    from detox.defenses.purifiers import purify_all
    from detox.plots.purification import purification_grid

    xs = [pset.test.x[:4]] + [t.x[:4] for t in pset.triggered.values()]
    x = torch.cat(xs)[:12]
    after = purify_all(purifier, x, device=device, seed=seed, progress=False)
    return purification_grid(x, after, path)


def purified_evaluation(
    purifier: Any,
    victim: nn.Module,
    pset: PoisonedSet,
    device: torch.device | str,
    seed: int,
    progress: bool = True,
    cache: bool = True,
) -> dict[str, Any]:
    """CA on purified clean test images, PA and ASR on purified triggered ones.

    With ``cache`` purified images are kept in the purified-image cache (see
    :func:`~detox.defenses.purifiers.purify_all`): the clean test set, the same for every
    attack of a dataset, is purified once per purifier setting and seed."""
    import time

    from detox.defenses.purifiers import purify_all

    t0 = time.perf_counter()
    n = [0]

    def transform(x: torch.Tensor) -> torch.Tensor:
        n[0] += len(x)
        return purify_all(purifier, x, device=device, seed=seed, progress=progress, cache=cache)

    hits0 = purifier.cached_images
    ev = evaluate_backdoor(victim, pset, transform=transform)
    secs = time.perf_counter() - t0
    cached = purifier.cached_images - hits0
    return {
        "kind": "purifier",
        "config": asdict(purifier.config),
        "evaluation": ev,
        "purify_seconds": round(secs, 2),
        "images_purified": n[0] - cached,
        "images_from_cache": cached,
        "images_per_second": round((n[0] - cached) / max(secs, 1e-9), 3),
    }
