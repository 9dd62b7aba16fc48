"""The model-repair interface: a backdoored model in, a repaired model out.

Model repair (ABL's unlearning, Neural Cleanse's unlearning, fine-pruning) changes the
victim's weights instead of its data or inputs. :meth:`ModelRepair.repair` gets a copy of
the victim (``ctx.model``), the training set as the defender holds it (poisoned, labels as
given) and, where declared, trusted clean examples; it returns the repaired model, which
is evaluated like any victim (CA / PA / ASR).

Adding a repair is one module with a config dataclass (declared with
:func:`~detox.config.hp`, ``PRESETS``) and a :class:`ModelRepair` subclass registered in
``REPAIRS``, plus its import in ``detox/defenses/repairs/__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from torch import nn

from detox.data.base import ImageDataset
from detox.defenses.context import DefenseContext, DefenseMethod, build_method
from detox.registry import Registry


class ModelRepair(DefenseMethod, ABC):
    """Base class of model-repair defenses."""

    needs_model: ClassVar[bool] = True  # always: it repairs the victim
    needs_probes: ClassVar[bool] = False  # trusted clean examples (e.g. NC's fine-tuning set)

    @abstractmethod
    def repair(self, data: ImageDataset, ctx: DefenseContext) -> nn.Module:
        """The repaired model. ``ctx.model`` is a copy of the victim (free to modify);
        ``data`` is the training set as the defender holds it."""


REPAIRS: Registry[type[ModelRepair]] = Registry("model repair")


def build_repair(name: str, preset: str | None = None, **overrides: Any) -> ModelRepair:
    return build_method(REPAIRS, name, preset, **overrides)
