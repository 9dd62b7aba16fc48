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
from typing import Any

import numpy as np

from detox.data.base import ImageDataset
from detox.defenses.context import DefenseContext, DefenseMethod, build_method
from detox.errors import ConfigError
from detox.registry import Registry


@dataclasses.dataclass
class DetectorContext(DefenseContext):
    """Everything a detector may use besides the data: the fields of
    :class:`~detox.defenses.context.DefenseContext` (``model``: a classifier trained on the
    poisoned training set, given to detectors that declare ``needs_model`` (UltraClean);
    ``probes``: indices of trusted clean examples within the data (BaDLoss's probes);
    ``train_config``: the :class:`~detox.training.TrainConfig` of the final training run;
    device, seed, dataset), plus:

    ``artifacts``: a dict the detector may fill with extra outputs (e.g. trajectories) for
    plots and reports; ``artifacts["score_parts"]`` (name -> per-example values that make
    up the score) gets each part's AUROC into the detection report; ``artifacts["record"]``
    (a JSON-able dict: what the detector decided, e.g. which model scored) is kept in the
    run's and the bench cell's record.
    ``labels``: the training labels (for cuts within a class).
    ``n_poisons``: the number of poisoned examples where it is known (an experiment's ground
    truth; the budget of UltraClean's "target class known" cut), else None.
    """

    artifacts: dict[str, Any] = dataclasses.field(default_factory=dict)
    labels: np.ndarray | None = None
    n_poisons: int | None = None

    @classmethod
    def for_set(cls, data: Any, **kwargs: Any) -> DetectorContext:
        """A context for ``data`` (a :class:`~detox.data.poisoned.PoisonedSet`): its labels
        and, when it records attacks (its ground truth), its number of poisons."""
        n = int(data.is_poisoned.sum()) if data.attacks else None
        return cls(labels=data.y.numpy(), n_poisons=n, **kwargs)


def dataset_name(data: Any, given: str | None = None) -> str:
    """The dataset a set of examples comes from (``given`` if set, else its ``meta`` or
    ``source`` record, else its name): what a detector that trains its own model passes to
    :func:`~detox.models.build_model` for the dataset's normalisation."""
    if given:
        return given
    meta = getattr(data, "meta", None) or getattr(data, "source", None) or {}
    return str(meta.get("dataset", getattr(data, "name", "")))


class Detector(DefenseMethod, ABC):
    """Base class of training-set defenses (``needs_model``: a model trained on the
    poisoned set; ``needs_probes``: trusted clean examples)."""

    @abstractmethod
    def score(self, data: ImageDataset, ctx: DetectorContext) -> np.ndarray:
        """Suspicion score of every example of ``data`` (float64, shape (N,))."""

    def remove_fraction(self) -> float:
        return float(getattr(self.config, "remove_fraction", 0.0))

    def cut(self, scores: np.ndarray, ctx: DetectorContext) -> np.ndarray:
        """Which examples to remove, never a probe. With a config field ``cut`` other than
        ``"fraction"``, the method's own verdicts (:meth:`own_cut`: a threshold, flagged
        clusters); otherwise ``remove_fraction`` of the set by score."""
        from detox.defenses.cut import cut_fraction

        protected = np.zeros(len(scores), bool)
        if ctx.probes is not None:
            protected[np.asarray(ctx.probes, dtype=np.int64)] = True
        if getattr(self.config, "cut", "fraction") != "fraction":
            return np.asarray(self.own_cut(scores, ctx), dtype=bool) & ~protected
        return cut_fraction(scores, self.remove_fraction(), protected=protected)

    def own_cut(self, scores: np.ndarray, ctx: DetectorContext) -> np.ndarray:
        """The method's own verdicts (boolean, shape (N,)), for its ``cut`` setting;
        ``score`` records in ``ctx.artifacts`` what they need."""
        raise ConfigError(f"detector {self.name!r} has no cut of its own; use cut = 'fraction'")


DETECTORS: Registry[type[Detector]] = Registry("detector")


def build_detector(name: str, preset: str | None = None, **overrides: Any) -> Detector:
    return build_method(DETECTORS, name, preset, **overrides)
