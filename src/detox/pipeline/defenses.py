"""One path per defense kind: :data:`DEFENSE_KINDS` and :func:`run_defense`.

A defense's *kind* says what it changes and how it is measured; each kind is registered
here with the registry of its methods and its runner:

==============  ================================  =============================================
kind            methods                           runner
==============  ================================  =============================================
``detector``    ``DETECTORS`` (scores)            score -> cut -> retrain on what is kept ->
                                                  CA / PA / ASR, detection TPR / FPR / AUROC
``purifier``    ``PURIFIERS`` (x -> x')           CA / PA / ASR of the victim on purified inputs
``filter``      ``FILTERS`` (reject inputs)       fit on trusted inputs; rejected = no class
``repair``      ``REPAIRS`` (model -> model')     CA / PA / ASR of the repaired model
==============  ================================  =============================================

Every runner builds the method's :class:`~detox.defenses.context.DefenseContext` with what
the method declares (``needs_model``: the victim and its fingerprint; ``needs_probes``:
trusted clean examples) and returns a plain, JSON-ready result with its ``kind``, its
``evaluation`` and ``figures`` (caption -> file name in the run folder) that the report
embeds as listed. ``detox run``, ``detox bench``, ``detox scan`` (the detector path's
:func:`~detox.pipeline.detection.detect`) and ``detox purify`` use these paths; a new kind
is one runner registered here.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detox.config import ConfigError, asdict
from detox.data import PoisonedSet
from detox.defenses.context import DefenseContext
from detox.pipeline.detection import choose_probes, cleanse_and_retrain, detect, write_detection
from detox.pipeline.evaluation import (
    evaluate_backdoor,
    evaluation_subset,
    filtered_evaluation,
    purification_samples,
    purified_evaluation,
)
from detox.registry import Registry
from detox.training import TrainConfig


@dataclasses.dataclass
class DefenseRun:
    """Everything a kind's runner is given (see :func:`run_defense`)."""

    name: str
    preset: str
    pset: PoisonedSet
    victim: nn.Module
    tcfg: TrainConfig
    device: torch.device
    seed: int
    out_dir: Path
    progress: bool = True
    cache: bool = True
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    trusted: np.ndarray | None = None  # indices the user vouches for (--trusted)
    purify_limit: int | None = None  # ExperimentConfig.purify_limit
    detect_only: bool = False  # ExperimentConfig.detect_only

    @property
    def dataset(self) -> str | None:
        return self.pset.source.get("dataset") or self.pset.source.get("name")

    def context(self, method: Any) -> DefenseContext:
        """The context ``method`` declared: the victim (a copy for a repair) only if it
        ``needs_model``, trusted examples only if it ``needs_probes``."""
        from detox.utils.fingerprint import state_fingerprint

        model = fp = None
        if getattr(method, "needs_model", False):
            model, fp = self.victim, state_fingerprint(self.victim)
        probes = choose_probes(method, self.pset, self.seed, self.trusted)
        trusted = None
        if probes is not None:
            sub = self.pset.subset(torch.from_numpy(np.asarray(probes, dtype=np.int64)))
            trusted = sub.as_dataset()
        return DefenseContext(
            model=model,
            model_fingerprint=fp,
            probes=probes,
            trusted=trusted,
            train_config=self.tcfg,
            device=self.device,
            seed=self.seed,
            dataset=self.dataset,
            progress=self.progress,
            cache=self.cache,
        )


@dataclasses.dataclass(frozen=True)
class DefenseKind:
    """A kind of defense: the registry of its methods and the runner of one of them."""

    name: str
    methods: Callable[[], Registry]  # imported on first use
    run: Callable[[DefenseRun], dict[str, Any]]


DEFENSE_KINDS: Registry[DefenseKind] = Registry("defense kind")


def register_kind(kind: DefenseKind) -> DefenseKind:
    DEFENSE_KINDS.register(kind.name)(kind)
    return kind


def defense_kind(name: str) -> DefenseKind:
    """The kind whose registry holds the defense ``name``; unknown names list every valid
    defense of every kind."""
    for k in DEFENSE_KINDS.names():
        kind = DEFENSE_KINDS.get(k)
        if name in kind.methods():
            return kind
    raise ConfigError(f"unknown defense {name!r}; valid defenses: {', '.join(defense_names())}")


def defense_names() -> list[str]:
    return sorted(n for k in DEFENSE_KINDS.names() for n in DEFENSE_KINDS.get(k).methods().names())


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
    trusted: np.ndarray | None = None,
    purify_limit: int | None = None,
    detect_only: bool = False,
) -> dict[str, Any]:
    """Run the defense ``name`` (of whichever kind) against ``victim`` / ``pset`` and write
    its files into ``out_dir``; returns its JSON-ready result (``kind``, ``evaluation``,
    ``figures`` and what the kind adds). ``overrides`` are settings of the defense's own
    config (e.g. ``diffusion=PATH``); ``purify_limit`` (``ExperimentConfig.purify_limit``)
    evaluates a purifier on a seeded subset of the test images, next to the undefended
    victim's ``reference`` evaluation on the same images; ``detect_only``
    (``ExperimentConfig.detect_only``) stops a detector after its cut: its result has the
    detection figures and ``evaluation`` None."""
    kind = defense_kind(name)
    run = DefenseRun(
        name=name,
        preset=preset,
        pset=pset,
        victim=victim,
        tcfg=tcfg,
        device=torch.device(device) if isinstance(device, str) else device,
        seed=int(seed),
        out_dir=Path(out_dir),
        progress=progress,
        cache=cache,
        overrides=dict(overrides or {}),
        trusted=trusted,
        purify_limit=purify_limit,
        detect_only=detect_only,
    )
    res = kind.run(run)
    res["kind"] = kind.name
    res.setdefault("figures", {})
    return res


def _relative(paths: dict[str, Any]) -> dict[str, str]:
    """caption -> file name (in the run folder) of the figures that were written."""
    return {cap: Path(p).name for cap, p in paths.items() if p is not None and Path(p).is_file()}


# ---------------------------------------------------------------------------------------
# the four kinds


def _detectors() -> Registry:
    from detox.defenses.detectors import DETECTORS

    return DETECTORS


def _run_detector(r: DefenseRun) -> dict[str, Any]:
    from detox.defenses.detectors import build_detector

    det = build_detector(r.name, r.preset, **r.overrides)
    probes = choose_probes(det, r.pset, r.seed, r.trusted)
    if r.detect_only:
        found = detect(r.pset, det, r.tcfg, r.device, r.victim, probes, r.seed, r.progress,
                       r.tcfg)  # fmt: skip
        res = {"found": found, "evaluation": None, "retrain": None}
    else:
        res = cleanse_and_retrain(
            r.pset, det, r.tcfg, r.device, r.victim, probes, r.seed, r.progress, r.cache
        )
        found = res["found"]
    figures = write_detection(r.out_dir, r.name, det, r.pset, found, f"{r.name}_scores.csv")
    return {
        "config": asdict(det.config),
        "evaluation": res["evaluation"],
        "detection": found.report,
        "n_kept": found.n_kept,
        "score_seconds": found.score_seconds,
        "retrain": res["retrain"],
        "figures": _relative(figures),
        **({"record": found.artifacts["record"]} if found.artifacts.get("record") else {}),
    }


def _purifiers() -> Registry:
    from detox.defenses.purifiers import PURIFIERS

    return PURIFIERS


def _run_purifier(r: DefenseRun) -> dict[str, Any]:
    from detox.defenses.purifiers import build_purifier

    pur = build_purifier(r.name, r.preset, **r.overrides)
    pur.use_dataset_defaults(r.dataset)
    pur.prepare(r.context(pur))
    pset = r.pset
    if r.purify_limit is not None:
        pset = evaluation_subset(r.pset, r.purify_limit, r.seed)
    res = purified_evaluation(pur, r.victim, pset, r.device, r.seed, r.progress, r.cache)
    if pset is not r.pset:
        # the undefended victim on the same images: what the purifier's figures compare with
        res["reference"] = evaluate_backdoor(r.victim, pset)
        res["purify_limit"] = r.purify_limit
    png = purification_samples(pur, pset, r.out_dir / f"{r.name}_samples.png", r.device, r.seed)
    res["figures"] = _relative({"test inputs and purified outputs": png})
    return res


def _filters() -> Registry:
    from detox.defenses.filters import FILTERS

    return FILTERS


def _run_filter(r: DefenseRun) -> dict[str, Any]:
    from detox.defenses.filters import build_filter

    filt = build_filter(r.name, r.preset, **r.overrides)
    ctx = r.context(filt)
    t0 = time.perf_counter()
    filt.fit(ctx)
    fit_seconds = time.perf_counter() - t0
    res = filtered_evaluation(filt, ctx, r.victim, r.pset)
    return {
        "config": asdict(filt.config),
        "evaluation": res,
        "threshold": filt.threshold,
        "fit_seconds": round(fit_seconds, 2),
        "figures": {},
    }


def _repairs() -> Registry:
    from detox.defenses.repairs import REPAIRS

    return REPAIRS


def _run_repair(r: DefenseRun) -> dict[str, Any]:
    from detox.defenses.repairs import build_repair

    rep = build_repair(r.name, r.preset, **r.overrides)
    ctx = r.context(rep)
    ctx.model = copy.deepcopy(r.victim)  # the victim itself stays as it was
    t0 = time.perf_counter()
    repaired = rep.repair(r.pset.as_dataset(), ctx)
    seconds = time.perf_counter() - t0
    if not isinstance(repaired, nn.Module):
        raise ConfigError(
            f"model repair {r.name!r} returned {type(repaired).__name__}, not a model"
        )
    return {
        "config": asdict(rep.config),
        "evaluation": evaluate_backdoor(repaired.eval(), r.pset),
        "repair_seconds": round(seconds, 2),
        "figures": {},
    }


register_kind(DefenseKind("detector", _detectors, _run_detector))
register_kind(DefenseKind("purifier", _purifiers, _run_purifier))
register_kind(DefenseKind("filter", _filters, _run_filter))
register_kind(DefenseKind("repair", _repairs, _run_repair))
