"""Model-repair defenses: the victim's weights are repaired (see ``base.py``).

``REPAIRS`` maps names to repair classes; ``build_repair(name, preset, **overrides)`` makes
one with its typed config.
"""

from detox.defenses.repairs.base import REPAIRS, ModelRepair, build_repair

__all__ = ["REPAIRS", "ModelRepair", "build_repair"]
from detox.defenses.repairs import abl  # noqa: F401, E402
