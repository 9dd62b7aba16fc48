"""The detector interface.

A detector scores every example of a (possibly poisoned) training set; higher = more
suspicious. What it needs is passed explicitly in a :class:`DetectorContext`: a model
trained on the poisoned set (UltraClean), trusted clean probes (BaDLoss), the training
config to reproduce (BaDLoss pre-training), the device. Each detector declares its
hyper-parameters once, in a config dataclass (``Config``) with ``PRESETS``; the default cut
of the method (e.g. remove 30%) is part of that config as ``remove_fraction``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from detox.config import make_config
from detox.data.base import ImageDataset
from detox.registry import Registry


@dataclasses.dataclass
class DetectorContext:
    """Everything a detector may use besides the data.

    ``model``: a classifier trained on the poisoned training set (eval mode, [0,1] input).
    ``probes``: indices of trusted clean examples within the data (BaDLoss's probes).
    ``train_config``: the :class:`~detox.training.TrainConfig` of the final training run.
    ``artifacts``: a dict the detector may fill with extra outputs (e.g. trajectories) for
    plots and reports; ``artifacts["score_parts"]`` (name -> per-example values that make
    up the score) gets each part's AUROC into the detection report.
    ``labels``: the training labels (for cuts within a class).
    ``n_poisons``: the number of poisoned examples where it is known (an experiment's ground
    truth; the budget of UltraClean's "target class known" cut), else None.
    """

    model: nn.Module | None = None
    probes: np.ndarray | None = None
    train_config: Any = None
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    progress: bool = True
    artifacts: dict[str, Any] = dataclasses.field(default_factory=dict)
    labels: np.ndarray | None = None
    n_poisons: int | None = None

    @classmethod
    def for_set(cls, data: Any, **kwargs: Any) -> DetectorContext:
        """A context for ``data`` (a :class:`~detox.data.poisoned.PoisonedSet`): its labels
        and, when it records attacks (its ground truth), its number of poisons."""
        n = int(data.is_poisoned.sum()) if data.attacks else None
        return cls(labels=data.y.numpy(), n_poisons=n, **kwargs)


class Detector(ABC):
    """Base class of training-set defenses."""

    name: ClassVar[str]
    Config: ClassVar[type]
    needs_model: ClassVar[bool] = False  # needs a model trained on the poisoned set
    needs_probes: ClassVar[bool] = False  # needs trusted clean examples

    def __init__(self, config: Any | None = None) -> None:
        self.config = config if config is not None else make_config(self.Config)

    @abstractmethod
    def score(self, data: ImageDataset, ctx: DetectorContext) -> np.ndarray:
        """Suspicion score of every example of ``data`` (float64, shape (N,))."""

    def remove_fraction(self) -> float:
        return float(getattr(self.config, "remove_fraction", 0.0))

    def cut(self, scores: np.ndarray, ctx: DetectorContext) -> np.ndarray:
        """The method's own default cut: remove ``remove_fraction`` of the set, never a
        probe. Detectors with an adaptive cut override this."""
        from detox.defenses.cut import cut_fraction

        protected = None
        if ctx.probes is not None:
            protected = np.zeros(len(scores), bool)
            protected[np.asarray(ctx.probes, dtype=np.int64)] = True
        return cut_fraction(scores, self.remove_fraction(), protected=protected)


DETECTORS: Registry[type[Detector]] = Registry("detector")


def build_detector(name: str, preset: str | None = None, **overrides: Any) -> Detector:
    cls = DETECTORS.get(name)
    return cls(make_config(cls.Config, preset, **overrides))
