"""Training-set defenses: every detector gives every training example a suspicion score.

``DETECTORS`` maps names to detector classes; ``build_detector(name, preset, **overrides)``
makes one with its typed config. The cut (which examples to remove) is the shared step in
:mod:`detox.defenses.cut`.
"""

from detox.defenses.detectors.base import DETECTORS, Detector, DetectorContext, build_detector

__all__ = ["DETECTORS", "Detector", "DetectorContext", "build_detector"]
from detox.defenses.detectors import (
    abl,  # noqa: F401
    activation_clustering,  # noqa: F401
    badloss,  # noqa: F401
    cognitive_distillation,  # noqa: F401
    frequency,  # noqa: F401
    psbd,  # noqa: F401
    scan,  # noqa: F401
    spectral,  # noqa: F401
    strip,  # noqa: F401
    ultraclean,  # noqa: F401
)
