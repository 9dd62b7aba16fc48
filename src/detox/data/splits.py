"""The dataset splits every loader serves (``train`` and ``test``) and their check.

Kept apart from :mod:`detox.data.registry` so that loaders and the helpers they use can
check a split without importing the registry that imports them.
"""

from __future__ import annotations

from detox.errors import ConfigError

SPLITS = ("train", "test")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    return split
