"""Test-time defenses: every purifier maps input images to cleaned images.

``PURIFIERS`` maps names to purifier classes; ``build_purifier(name, preset, **overrides)``
makes one with its typed config; :func:`purify_all` purifies a uint8 image set in batches
with a progress bar. Registered: ``sampdetox``.
"""

from detox.defenses.purifiers.base import (
    PURIFIERS,
    NoiseStreams,
    Purifier,
    build_purifier,
    purify_all,
)
from detox.defenses.purifiers.sampdetox import (  # registers "sampdetox"
    SampDetox,
    SampDetoxConfig,
    SampDetoxOutput,
    ssim_map,
)

__all__ = [
    "PURIFIERS",
    "NoiseStreams",
    "Purifier",
    "SampDetox",
    "SampDetoxConfig",
    "SampDetoxOutput",
    "build_purifier",
    "purify_all",
    "ssim_map",
]
