"""STRIP (Gao et al., ACSAC 2019) as a test-time input filter: the form of the paper.

Every input reaching the model is blended with ``n_perturb`` trusted clean images; inputs
whose mean prediction entropy falls below the threshold are refused. The threshold is
fitted on the trusted images' own entropies at the false-rejection rate ``frr`` (a normal
fitted to them, its ``frr`` quantile, as the authors' code does). Settings, computation
and sources: :mod:`detox.defenses.detectors.strip` (one config serves both forms).
"""

from __future__ import annotations

import numpy as np
import torch

from detox.defenses.context import DefenseContext
from detox.defenses.detectors.strip import StripConfig, entropy_threshold, strip_entropy
from detox.defenses.filters.base import FILTERS, InputFilter
from detox.utils.seed import derive_seed


@FILTERS.register("strip-filter")
class StripFilter(InputFilter):
    """STRIP's run-time filter; ``scores`` are negated entropies (higher = refused)."""

    name = "strip-filter"
    Config = StripConfig
    config: StripConfig

    def fit(self, ctx: DefenseContext) -> None:
        cfg = self.config
        pool = ctx.require_trusted(self.name).x
        model = ctx.require_model(self.name)
        clean = strip_entropy(model, pool, pool, cfg.n_perturb, derive_seed(ctx.seed, "strip-fit"),
                              ctx.device, cfg.blend, cfg.batch_size)  # fmt: skip
        self.clean_entropy = clean
        self.threshold = -entropy_threshold(clean, cfg.frr, cfg.threshold)

    def scores(self, x: torch.Tensor, ctx: DefenseContext) -> np.ndarray:
        cfg = self.config
        pool = ctx.require_trusted(self.name).x
        ent = strip_entropy(ctx.require_model(self.name), x, pool, cfg.n_perturb,
                            derive_seed(ctx.seed, "strip-test"), ctx.device, cfg.blend,
                            cfg.batch_size, ctx.progress, "STRIP filter")  # fmt: skip
        return -ent
