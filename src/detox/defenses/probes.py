"""Trusted clean probes: a seeded, optionally class-balanced sample of the examples a
defender vouches for (BaDLoss's reference set; any detector that needs clean examples).

The paper's benchmarks draw them from the truly clean examples of the poisoned set
(``clean_mask = attack_id < 0``); a user passes the indices they trust (``trusted``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from detox.errors import ConfigError


def _labels_of(data_or_labels: Any) -> np.ndarray:
    y = getattr(data_or_labels, "y", data_or_labels)
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    return np.asarray(y).astype(np.int64).ravel()


def select_probes(
    data_or_labels: Any,
    n: int,
    seed: int,
    clean_mask: Any | None = None,
    class_balanced: bool = False,
    trusted: Any | None = None,
) -> np.ndarray:
    """Seeded choice of ``n`` probe indices (sorted int64) among trusted clean examples.

    The pool is ``trusted`` (indices the user vouches for) when given, else the examples
    where ``clean_mask`` is true (known-clean examples, as the paper does in its
    benchmarks: pass ``clean_mask=poisoned_set.attack_id < 0``). One of the two is
    required. ``class_balanced`` draws ``n // C`` per class (all of a class when it has
    fewer), then fills the rest at random from the remaining pool.
    """
    y = _labels_of(data_or_labels)
    if trusted is not None:
        pool = np.unique(np.asarray(trusted, dtype=np.int64).ravel())
        if len(pool) and (pool.min() < 0 or pool.max() >= len(y)):
            raise ConfigError(f"trusted indices must lie in [0, {len(y)})")
    elif clean_mask is not None:
        m = clean_mask.cpu().numpy() if isinstance(clean_mask, torch.Tensor) else clean_mask
        m = np.asarray(m, dtype=bool).ravel()
        if len(m) != len(y):
            raise ConfigError(f"clean_mask has {len(m)} entries, the data {len(y)}")
        pool = np.flatnonzero(m)
    else:
        raise ConfigError(
            "BaDLoss probes must be trusted clean examples: pass trusted=<indices> "
            "or clean_mask=<bool mask> (benchmarks: poisoned_set.attack_id < 0)"
        )
    if not 1 <= n <= len(pool):
        raise ConfigError(f"cannot draw {n} probes from {len(pool)} trusted examples")
    rng = np.random.default_rng(int(seed))
    if not class_balanced:
        return np.sort(rng.choice(pool, size=n, replace=False)).astype(np.int64)
    classes = np.unique(y[pool])
    quota = n // len(classes)
    chosen = []
    for c in classes:
        members = pool[y[pool] == c]
        chosen.append(rng.choice(members, size=min(quota, len(members)), replace=False))
    picked = np.concatenate(chosen) if chosen else np.empty(0, np.int64)
    need = n - len(picked)
    if need > 0:
        rest = np.setdiff1d(pool, picked)
        picked = np.concatenate([picked, rng.choice(rest, size=need, replace=False)])
    return np.sort(picked).astype(np.int64)
