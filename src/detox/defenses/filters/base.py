"""The input-filter interface (test-time defenses that *reject* inputs).

An input filter looks at each input reaching the classifier and refuses the suspicious
ones (STRIP: the entropy of the model's predictions on blends of the input with clean
images). It is fitted once on trusted clean inputs (:meth:`InputFilter.fit`: typically a
threshold at a false-rejection rate), then scores any batch (:meth:`InputFilter.scores`,
higher = more suspicious) and rejects those above the threshold.

Evaluation (:func:`detox.pipeline.filtered_evaluation`): a rejected input is a prediction
of no class, so a rejected clean image counts against CA and a rejected triggered image
is an attack that failed; the run also reports the false-rejection rate on clean inputs
(``frr``) and the rejection rate of each attack's triggered inputs (``rejected``).

Adding a filter is one module with a config dataclass (declared with
:func:`~detox.config.hp`, ``PRESETS``) and an :class:`InputFilter` subclass registered in
``FILTERS``, plus its import in ``detox/defenses/filters/__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch

from detox.defenses.context import DefenseContext, DefenseMethod, build_method
from detox.errors import ConfigError
from detox.registry import Registry


class InputFilter(DefenseMethod, ABC):
    """Base class of input filters. Subclasses implement :meth:`fit` and :meth:`scores`."""

    needs_model: ClassVar[bool] = True  # filters query the model they protect
    needs_probes: ClassVar[bool] = True  # fitted on trusted clean inputs

    def __init__(self, config: Any | None = None) -> None:
        super().__init__(config)
        self.threshold: float | None = None

    @abstractmethod
    def fit(self, ctx: DefenseContext) -> None:
        """Set :attr:`threshold` (and anything else) from the context's trusted inputs."""

    @abstractmethod
    def scores(self, x: torch.Tensor, ctx: DefenseContext) -> np.ndarray:
        """Suspicion of every input of the uint8 batch ``x`` (float64, shape (N,))."""

    def reject(self, x: torch.Tensor, ctx: DefenseContext) -> np.ndarray:
        """Boolean mask of the inputs of ``x`` refused (score above the threshold)."""
        if self.threshold is None:
            raise ConfigError(f"input filter {self.name!r}: fit() it before reject()")
        return np.asarray(self.scores(x, ctx), dtype=np.float64) > self.threshold


FILTERS: Registry[type[InputFilter]] = Registry("input filter")


def build_filter(name: str, preset: str | None = None, **overrides: Any) -> InputFilter:
    return build_method(FILTERS, name, preset, **overrides)
