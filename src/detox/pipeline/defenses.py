"""Run one defense by name (detector or purifier) against a victim: :func:`run_defense`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detox.config import ConfigError, asdict
from detox.data import PoisonedSet
from detox.pipeline.detection import choose_probes, cleanse_and_retrain, write_detection
from detox.pipeline.evaluation import purification_samples, purified_evaluation
from detox.training import TrainConfig


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
        found = res["found"]
        write_detection(out_dir, name, det, pset, found, f"{name}_scores.csv")
        return {
            "kind": "detector",
            "config": asdict(det.config),
            "evaluation": res["evaluation"],
            "detection": found.report,
            "n_kept": found.n_kept,
            "score_seconds": found.score_seconds,
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
