"""A restricted unpickler for the CIFAR-10 python batches.

``pickle.load`` runs whatever a pickle asks for (``__reduce__`` can call ``os.system``).
:class:`SafeUnpickler` admits only the globals the official CIFAR-10 batches use (NumPy
array reconstruction and dtypes); any other global raises
:class:`~detox.errors.UnsafePickleError` naming it and the file, before anything runs.
Plain containers (dict, list, str, int, bytes, ...) need no global, so they load as usual.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from detox.errors import DataError, UnsafePickleError


def _reconstruct() -> Any:
    try:  # NumPy >= 2
        from numpy._core.multiarray import _reconstruct as fn
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


def _scalar() -> Any:
    try:
        from numpy._core.multiarray import scalar as fn
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import scalar as fn
    return fn


def _codecs_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to the text encodings pickle uses for bytes."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "utf8", "ascii"):
        raise UnsafePickleError(f"pickle asked for _codecs.encode with encoding {encoding!r}")
    if not isinstance(obj, str):
        raise UnsafePickleError("pickle asked for _codecs.encode of a non-string")
    return obj.encode(encoding, errors)


# (module, name) -> object. The objects come from this table, never from an import of
# what the pickle names, so an allowed name cannot be redirected elsewhere.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct(),
    ("numpy.core.multiarray", "scalar"): _scalar(),
    ("numpy._core.multiarray", "scalar"): _scalar(),
    # plain containers, in case a batch was re-pickled with protocol 0/1 or sets
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("__builtin__", "bytearray"): bytearray,
    ("_codecs", "encode"): _codecs_encode,  # protocol 2 pickles of bytes use it
}


ALLOWED_GLOBALS: frozenset[str] = frozenset(f"{m}.{n}" for m, n in _ALLOWED)


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only allow-listed globals (see module docstring).

    ``source`` names the file in error messages. Use ``encoding="latin1"`` for the
    Python 2 pickles of CIFAR-10.
    """

    def __init__(self, file: Any, *, source: str = "<pickle>", **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"{self.source}: refused to load global {module}.{name} from a pickle "
                f"(it could run code); only {', '.join(sorted(ALLOWED_GLOBALS))} are allowed"
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refused a persistent id in a pickle")


def safe_loads(data: bytes, *, source: str = "<bytes>", encoding: str = "latin1") -> Any:
    """Unpickle ``data`` with :class:`SafeUnpickler`; malformed data raises DataError."""
    try:
        return SafeUnpickler(io.BytesIO(data), source=source, encoding=encoding).load()
    except DataError:
        raise
    except Exception as e:  # UnpicklingError, EOFError, ValueError, TypeError, ...
        raise DataError(f"{source}: not a valid pickle ({type(e).__name__}: {e})") from e


def safe_load(path: str | os.PathLike, *, encoding: str = "latin1") -> Any:
    """Unpickle the file at ``path`` with :class:`SafeUnpickler`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    return safe_loads(data, source=str(path), encoding=encoding)
