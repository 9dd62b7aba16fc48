"""Where detox looks for data and where it caches extracted archives.

* Data directory: ``--data-dir`` on the command line, else ``$DETOX_DATA_DIR``, else
  ``~/.cache/detox/data`` (where downloads land). Local archives or extracted folders placed
  there are used as they are; nothing is downloaded when a local copy exists.
* Cache directory: ``$DETOX_CACHE``, else ``~/.cache/detox``. Archives are extracted into
  ``<cache>/extracted/<name>-<checksum>`` atomically (temp dir, then rename).
"""

from __future__ import annotations

import os
from pathlib import Path

_DATA_DIR_OVERRIDE: Path | None = None


def set_data_dir(path: str | os.PathLike | None) -> None:
    """Set the data directory for this process (what ``--data-dir`` does)."""
    global _DATA_DIR_OVERRIDE
    _DATA_DIR_OVERRIDE = Path(path).expanduser() if path else None


def cache_dir() -> Path:
    env = os.environ.get("DETOX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "detox"


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The data directory: explicit argument > ``set_data_dir`` > $DETOX_DATA_DIR > cache/data."""
    if explicit:
        return Path(explicit).expanduser()
    if _DATA_DIR_OVERRIDE is not None:
        return _DATA_DIR_OVERRIDE
    env = os.environ.get("DETOX_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return cache_dir() / "data"
