"""Evaluation: CA / PA / ASR of a model, on plain or purified test inputs."""

from __future__ import annotations

import copy
import os
import typing
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detox.config import ConfigError, asdict
from detox.data import PoisonedSet
from detox.metrics import attack_success_rate, clean_accuracy, poisoned_accuracy
from detox.training import predict


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


def subset_order(n_test: int, seed: int) -> torch.Tensor:
    """The seeded order of ``n_test`` clean test images that :func:`evaluation_subset`
    draws its subsets from (a permutation of ``range(n_test)``)."""
    from detox.utils.seed import derive_seed

    g = torch.Generator().manual_seed(derive_seed(int(seed), "purify-subset"))
    return torch.randperm(n_test, generator=g)


def evaluation_subset(pset: PoisonedSet, limit: int, seed: int) -> PoisonedSet:
    """``pset`` with its clean test set and each triggered test set cut to at most
    ``limit`` images, for a test-time defense too costly to run on all of them.

    One seeded order of the clean test set decides both: the clean subset is its first
    ``limit`` images, and each triggered subset takes the triggered images in the order of
    the clean images they were made from, so the two subsets share their images as far as
    the target class allows. The order depends on the seed and the test set only, so
    every purifier and every attack of a run sees the same images (and the purified-image
    cache serves them again). The training set is shared, not copied."""
    import dataclasses

    from detox.data.poisoned import TriggeredSet

    if pset.test is None:
        raise ConfigError("evaluation_subset: the poisoned set carries no test set")
    if limit < 1:
        raise ConfigError(f"purify_limit={limit}: expected >= 1")
    order = subset_order(len(pset.test), seed)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    keep = order[:limit].sort().values
    test = dataclasses.replace(pset.test, x=pset.test.x[keep], y=pset.test.y[keep])
    triggered = {}
    for name, t in pset.triggered.items():
        pick = torch.argsort(rank[t.index])[:limit].sort().values
        triggered[name] = TriggeredSet(t.x[pick], t.y_true[pick], t.y_target[pick], t.index[pick])
    out = copy.copy(pset)
    out.test, out.triggered = test, triggered
    return out


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


def filtered_evaluation(
    filt: Any, ctx: Any, victim: nn.Module, pset: PoisonedSet
) -> dict[str, Any]:
    """CA / PA / ASR of ``victim`` behind the fitted input filter ``filt``.

    A rejected input is answered with no class (prediction -1): a rejected clean image
    counts against CA, a rejected triggered image is a failed attack. Adds ``frr`` (clean
    test images rejected) and, per attack, ``rejected`` (its triggered images rejected)."""
    import numpy as np

    if pset.test is None:
        raise ConfigError("evaluate: the poisoned set carries no test set")

    def _pred(x: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        rej = np.asarray(filt.reject(x, ctx), dtype=bool)
        if rej.shape != (len(x),):
            raise ConfigError(
                f"input filter {filt.name!r}: {rej.shape} verdicts for {len(x)} inputs"
            )
        p = predict(victim, x).clone()
        p[torch.from_numpy(rej)] = -1
        return p, rej

    p, rej = _pred(pset.test.x)
    out: dict[str, Any] = {
        "ca": clean_accuracy(p, pset.test.y),
        "frr": float(rej.mean()) if len(rej) else float("nan"),
        "n_test": len(pset.test),
        "attacks": {},
    }
    for name, t in pset.triggered.items():
        p, rej = _pred(t.x)
        out["attacks"][name] = {
            "asr": attack_success_rate(p, t.y_target, t.y_true),
            "pa": poisoned_accuracy(p, t.y_true, t.y_target),
            "rejected": float(rej.mean()) if len(rej) else float("nan"),
            "n": len(t),
        }
    return out
