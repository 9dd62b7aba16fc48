"""NumPy arrays on disk: reading ``.npy`` files safely and the decoded-array cache.

Loaders that decode many image files (or large archives) keep the decoded arrays in
``cache_dir()/decoded/<key>/`` (:func:`cached_arrays`), keyed by a hash of the source
files' listing (:func:`listing_key`), so decoding happens once, not on every load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from detox.data.paths import cache_dir
from detox.errors import DataError
from detox.utils.io import atomic_write_json

log = logging.getLogger("detox.data")


def load_npy(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """``np.load(path, allow_pickle=False)`` with a :class:`DataError` for bad files."""
    path = Path(path)
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise DataError(
                f"{path}: holds Python objects (a pickle); only plain numeric/string arrays "
                "are loaded (allow_pickle=False)"
            ) from e
        raise DataError(f"{path}: not a valid .npy file ({e})") from e
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read .npy file ({e})") from e


def listing_key(files: Iterable[Path], root: Path, *extra: Any) -> str:
    """A short hash of (relative path, size, mtime) of ``files`` plus ``extra`` values."""
    h = hashlib.sha256(repr(extra).encode())
    for f in files:
        st = f.stat()
        h.update(f"{os.path.relpath(f, root)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def cached_arrays(
    key: str, build: Callable[[], dict[str, np.ndarray]]
) -> tuple[dict[str, np.ndarray], bool]:
    """Arrays from ``cache_dir()/decoded/<key>/`` or ``build()`` (then saved there).

    Each array is a ``.npy`` written atomically; ``manifest.json`` is written last and
    lists shapes and dtypes, so a partial cache is never used. Returns (arrays, hit).
    """
    folder = cache_dir() / "decoded" / key
    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            entries = json.loads(manifest.read_text(encoding="utf-8"))["arrays"]
            arrays = {k: np.load(folder / f"{k}.npy", allow_pickle=False) for k in entries}
            if all(
                list(arrays[k].shape) == e["shape"] and str(arrays[k].dtype) == e["dtype"]
                for k, e in entries.items()
            ):
                return arrays, True
        except (OSError, ValueError, KeyError, TypeError):
            pass
        log.warning("detox: decoded cache %s is unreadable; rebuilding it", folder)
    arrays = build()
    with contextlib.suppress(OSError):  # a read-only cache only costs time
        folder.mkdir(parents=True, exist_ok=True)
        for k, arr in arrays.items():
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{k}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
                os.replace(tmp, folder / f"{k}.npy")
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        entries = {k: {"shape": list(a.shape), "dtype": str(a.dtype)} for k, a in arrays.items()}
        atomic_write_json(manifest, {"arrays": entries})
    return arrays, False
