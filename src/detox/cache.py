"""The one cache of computed results: victims, attack artefacts, purified images.

Every entry is a folder ``<cache dir>/<kind>/<key>/`` (``kind``: ``victims``, ``artefacts``,
``purified``; the cache dir is ``$DETOX_CACHE`` or ``~/.cache/detox``) holding the entry's
files and ``entry.json``: its kind and key, what it was computed from (``given``: a plain
description of the inputs that made the key), when, and the size and SHA-256 of every
file. The key is a content hash of *everything the result depends on* (:func:`cache_key`:
input tensors by their bytes, settings, the code of the method, the runtime); a caller
that forgets an input gets a stale entry, so each kind's key is made in one place (the
victim trainer, :class:`~detox.attacks.context.AttackContext`, :func:`purify_all`).

Writes are atomic: the files go to a staging folder beside the entry, which is renamed
into place once complete; a reader never sees half an entry, and an entry whose files do
not match ``entry.json`` (a truncated copy) is treated as missing and recomputed.

Entries travel as plain folders: :meth:`Store.export` copies one out (``detox cache
export``), :meth:`Store.import_entry` checks a folder's files against its ``entry.json``
and installs it under its key (``detox cache import``), so a colleague's poisoned set or
victim is reused as if computed here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detox.errors import ConfigError
from detox.utils.io import atomic_write_json, read_json

#: The kinds of entry; each is one folder of the cache directory.
KINDS = ("victims", "artefacts", "purified")
ENTRY = "entry.json"
FORMAT = 1


def cache_key(*parts: Any, length: int = 24) -> str:
    """A content hash of ``parts``: tensors and arrays by dtype, shape and bytes; dicts by
    sorted items; dataclasses as dicts; everything else by ``repr``."""
    h = hashlib.sha256()
    for p in parts:
        _feed(h, p)
    return h.hexdigest()[:length]


def _feed(h: Any, p: Any) -> None:
    if torch.is_tensor(p):
        p = p.detach().cpu().contiguous().numpy()
    if isinstance(p, np.ndarray):
        h.update(f"<array {p.dtype} {p.shape}>".encode())
        h.update(np.ascontiguousarray(p).tobytes())
    elif dataclasses.is_dataclass(p) and not isinstance(p, type):
        _feed(h, {"<dataclass>": type(p).__name__, **dataclasses.asdict(p)})
    elif isinstance(p, dict):
        h.update(b"<dict>")
        for k in sorted(p, key=repr):
            _feed(h, k)
            _feed(h, p[k])
        h.update(b"</dict>")
    elif isinstance(p, list | tuple):
        h.update(f"<{type(p).__name__} {len(p)}>".encode())
        for v in p:
            _feed(h, v)
    else:
        h.update(repr(p).encode())
        h.update(b"|")


@dataclasses.dataclass(frozen=True)
class Entry:
    """A complete cache entry: its folder and its ``entry.json``."""

    kind: str
    key: str
    path: Path
    meta: dict[str, Any]

    def file(self, name: str) -> Path:
        return self.path / name


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"cache kind {kind!r}: expected one of {', '.join(KINDS)}")


def _check_key(key: str) -> None:
    if not key or not all(c in "0123456789abcdef" for c in key):
        raise ConfigError(f"cache key {key!r}: expected a lowercase hexadecimal digest")


class Store:
    """The entries of one ``kind`` under ``root`` (default: the cache directory)."""

    def __init__(self, kind: str, root: str | os.PathLike | None = None) -> None:
        _check_kind(kind)
        if root is None:
            from detox.data.paths import cache_dir

            root = cache_dir()
        self.kind = kind
        self.folder = Path(root) / kind

    def path(self, key: str) -> Path:
        _check_key(key)
        return self.folder / key

    def get(self, key: str, verify: bool = False) -> Entry | None:
        """The complete entry of ``key``, or None. Files whose sizes differ from
        ``entry.json`` (and, with ``verify``, whose SHA-256 differ) make it missing."""
        folder = self.path(key)
        try:
            meta = read_json(folder / ENTRY)
        except (OSError, ConfigError):
            return None
        if meta.get("kind") != self.kind or meta.get("key") != key:
            return None
        for name, rec in meta.get("files", {}).items():
            f = folder / name
            if not f.is_file() or f.stat().st_size != rec["size"]:
                return None
            if verify and _digest(f) != rec["sha256"]:
                return None
        return Entry(self.kind, key, folder, meta)

    def put(
        self, key: str, write: Callable[[Path], None], given: dict[str, Any] | None = None
    ) -> Entry:
        """Make the entry of ``key``: ``write(folder)`` fills a staging folder, which is
        then recorded (``entry.json``) and renamed into place. An existing entry of the
        same key is replaced (it was incomplete or is being recomputed)."""
        target = self.path(key)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.folder, prefix=f".{key}.partial-"))
        try:
            write(tmp)
            self._record(tmp, key, given or {})
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        entry = self.get(key)
        assert entry is not None
        return entry

    def _record(self, folder: Path, key: str, given: dict[str, Any]) -> None:
        files = {
            p.name: {"size": p.stat().st_size, "sha256": _digest(p)}
            for p in sorted(folder.iterdir())
            if p.is_file() and p.name != ENTRY
        }
        meta = {
            "format": FORMAT,
            "kind": self.kind,
            "key": key,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "given": given,
            "files": files,
        }
        atomic_write_json(folder / ENTRY, meta)

    def entries(self) -> list[Entry]:
        if not self.folder.is_dir():
            return []
        out = []
        for p in sorted(self.folder.iterdir()):
            if p.is_dir() and not p.name.startswith("."):
                try:
                    e = self.get(p.name)
                except ConfigError:
                    continue
                if e is not None:
                    out.append(e)
        return out

    def export(self, key: str, dest: str | os.PathLike) -> Path:
        """Copy the entry of ``key`` to the folder ``dest`` (which must not exist)."""
        entry = self.get(key, verify=True)
        if entry is None:
            raise ConfigError(f"cache {self.kind}: no complete entry {key!r}")
        dest = Path(dest)
        if dest.exists():
            raise ConfigError(f"{dest}: exists; export writes a new folder")
        shutil.copytree(entry.path, dest)
        return dest

    def import_entry(self, src: str | os.PathLike) -> Entry:
        """Install the exported entry in folder ``src`` under its own key, after checking
        every file against its ``entry.json`` (kind, size, SHA-256)."""
        src = Path(src)
        meta = read_json(src / ENTRY)
        key = str(meta.get("key", ""))
        if meta.get("kind") != self.kind:
            raise ConfigError(f"{src}: a {meta.get('kind')!r} entry, not {self.kind!r}")
        _check_key(key)
        names = {p.name for p in src.iterdir() if p.is_file() and p.name != ENTRY}
        if names != set(meta.get("files", {})):
            raise ConfigError(f"{src}: its files do not match {ENTRY}")
        for name, rec in meta["files"].items():
            if _digest(src / name) != rec["sha256"]:
                raise ConfigError(f"{src / name}: SHA-256 differs from {ENTRY} (damaged copy)")

        def copy(folder: Path) -> None:
            for name in meta["files"]:
                shutil.copy2(src / name, folder / name)

        return self.put(key, copy, meta.get("given", {}))


def find_entry(key: str, root: str | os.PathLike | None = None) -> Entry | None:
    """The entry of ``key`` in whichever kind holds it."""
    for kind in KINDS:
        e = Store(kind, root).get(key)
        if e is not None:
            return e
    return None
