"""Input filters: test-time defenses that reject suspicious inputs (see ``base.py``).

``FILTERS`` maps names to filter classes; ``build_filter(name, preset, **overrides)`` makes
one with its typed config.
"""

from detox.defenses.filters.base import FILTERS, InputFilter, build_filter

__all__ = ["FILTERS", "InputFilter", "build_filter"]
from detox.defenses.filters import (
    strip,  # noqa: F401
)
