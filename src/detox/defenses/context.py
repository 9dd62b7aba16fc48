"""What a defense is given besides its input: :class:`DefenseContext`.

Every defense kind (detector, purifier, input filter, model repair) receives one. A method
*declares* what it needs with class attributes and the runner (:mod:`detox.pipeline.defenses`)
supplies exactly that:

* ``needs_model``: the victim, i.e. the classifier trained on the poisoned set, in eval
  mode, taking [0, 1] images (``ctx.model``; None for a method that does not declare it, so
  a black-box method cannot peek), with ``ctx.model_fingerprint`` (its weights' digest,
  which keys every cached result that depends on it);
* ``needs_probes``: trusted clean examples, ``config.n_probes`` of them (``ctx.probes``:
  indices into the training set; ``ctx.trusted``: those images with their labels), drawn
  with the run's seed from what the user vouches for (``--trusted``) or, in an experiment
  with ground truth, from the truly clean examples (as the BaDLoss paper's benchmarks do).

Also always given: the device, the run's seed (derive every random choice from it), the
dataset's registered name (``ctx.dataset``; its facts via
:func:`detox.data.dataset_facts`), the training config of the victim (``train_config``:
what a method that retrains or fine-tunes should reproduce), the config that trained
``model`` (``model_config``: the same when detox trained the victim; None for a checkpoint
detox did not train, whose recipe is unknown), whether to show progress and whether
caching is allowed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from detox.errors import ConfigError


@dataclasses.dataclass
class DefenseContext:
    """See the module docstring."""

    model: nn.Module | None = None
    model_fingerprint: str | None = None
    probes: np.ndarray | None = None
    trusted: Any = None  # ImageDataset of the probes (images and the labels vouched for)
    train_config: Any = None
    model_config: Any = None
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    dataset: str | None = None
    progress: bool = True
    cache: bool = True

    def require_model(self, who: str) -> nn.Module:
        if self.model is None:
            raise ConfigError(
                f"{who} needs the victim model: declare needs_model = True on the class"
            )
        return self.model

    def require_trusted(self, who: str) -> Any:
        if self.trusted is None:
            raise ConfigError(
                f"{who} needs trusted clean examples: declare needs_probes = True and an "
                "n_probes setting"
            )
        return self.trusted


class DefenseMethod:
    """What the methods of every kind share: a name, a config dataclass (``Config``, its
    fields declared with :func:`~detox.config.hp`, its ``PRESETS``), and the declarations
    the runner reads (``needs_model``, ``needs_probes``; with ``needs_probes``, the config
    has ``n_probes``)."""

    name: ClassVar[str]
    Config: ClassVar[type]
    needs_model: ClassVar[bool] = False
    needs_probes: ClassVar[bool] = False

    def __init__(self, config: Any | None = None) -> None:
        from detox.config import make_config

        self.config = config if config is not None else make_config(self.Config)


def build_method(registry: Any, name: str, preset: str | None = None, **overrides: Any) -> Any:
    """The method ``name`` of ``registry`` with its config from ``preset`` and ``overrides``
    (checked: unknown settings and values out of their declared range are refused)."""
    from detox.config import make_config

    cls = registry.get(name)
    return cls(make_config(cls.Config, preset, **overrides))
