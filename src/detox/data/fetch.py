"""Getting a dataset's files: local copies, downloads, checksums, atomic extraction.

A dataset (or one piece of it) is described by a :class:`Resource`: the folder that holds
it (recognised by a *marker* path inside it, e.g. ``batches.meta``), the archive file names
accepted in the data directory with their known checksums, and the official download.

:func:`fetch` finds the data in this order:

1. an extracted folder in the data directory (:func:`detox.data.paths.data_dir`);
2. an archive there (several accepted names and compressions); a known checksum is
   verified (:class:`~detox.errors.ChecksumError` on mismatch) and the archive is
   extracted once into ``cache_dir()/extracted/<key>-<sha256[:12]>``;
3. the official archive, downloaded into the data directory (skipped when
   ``$DETOX_OFFLINE`` is set; ``$DETOX_DOWNLOAD_TIMEOUT`` seconds per network operation,
   10 by default) and treated as in 2.

Otherwise a :class:`MissingDataError` names the dataset, every place searched, the
setting to point at a local copy (``DETOX_DATA_DIR`` / ``--data-dir``) and the official URL.

Extraction is atomic: the archive is unpacked into a temp folder beside the final one,
validated (marker present, per-dataset checks such as member checksums) and only then
renamed into place, so a killed or failed extraction never leaves a folder that a later
run would load. Tar members are extracted with ``filter="data"`` (no absolute paths,
``..``, links out of the tree or device files); zip member names are checked likewise.

Checksums of large files are remembered in ``cache_dir()/checksums.json`` keyed by path,
size, inode, mtime and ctime, so a file is hashed once, not on every load.

What the loaders do with the files once found lives elsewhere: :mod:`detox.data.arrays`
(``.npy`` reading, the decoded-array cache) and :mod:`detox.data.images` (decoding and
resizing images).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from detox.data.paths import cache_dir, data_dir
from detox.errors import ChecksumError, DataError
from detox.utils.io import atomic_write_json

log = logging.getLogger("detox.data")

OFFLINE_ENV = "DETOX_OFFLINE"
TIMEOUT_ENV = "DETOX_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT_S = 10.0
STAMP = ".detox-extracted.json"


class MissingDataError(DataError):
    """No local copy of a dataset was found and it could not be downloaded."""


# --------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checksum:
    algo: str  # "md5" or "sha256"
    value: str


_MEMO: dict[str, str] = {}
_MEMO_MAX = 2000


def _memo_path() -> Path:
    return cache_dir() / "checksums.json"


def _memo_key(path: Path, algo: str) -> str:
    st = path.stat()
    return f"{algo}:{path.resolve()}:{st.st_size}:{st.st_ino}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _read_memo() -> dict[str, str]:
    try:
        with open(_memo_path(), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def file_digests(
    path: str | os.PathLike, algos: Iterable[str] = ("sha256",), memo: bool = True
) -> dict[str, str]:
    """Hex digests of a file for each of ``algos`` (one pass; remembered when ``memo``)."""
    path = Path(path)
    algos = list(dict.fromkeys(algos))
    out: dict[str, str] = {}
    keys = {a: _memo_key(path, a) for a in algos} if memo else {}
    if memo:
        disk: dict[str, str] | None = None
        for a in algos:
            if keys[a] in _MEMO:
                out[a] = _MEMO[keys[a]]
                continue
            if disk is None:
                disk = _read_memo()
            if keys[a] in disk:
                out[a] = _MEMO[keys[a]] = str(disk[keys[a]])
        if len(out) == len(algos):
            return out
    hashers = {a: hashlib.new(a, usedforsecurity=False) for a in algos}
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            for h in hashers.values():
                h.update(block)
    out = {a: h.hexdigest() for a, h in hashers.items()}
    if memo:
        for a in algos:
            _MEMO[keys[a]] = out[a]
        with contextlib.suppress(OSError):  # best effort; a read-only cache only costs time
            disk = _read_memo()
            disk.update({keys[a]: out[a] for a in algos})
            if len(disk) > _MEMO_MAX:
                disk = dict(list(disk.items())[-_MEMO_MAX:])
            atomic_write_json(_memo_path(), disk)
    return out


def file_digest(path: str | os.PathLike, algo: str = "sha256", memo: bool = True) -> str:
    return file_digests(path, (algo,), memo=memo)[algo]


def verify_file(path: str | os.PathLike, expected: Checksum, memo: bool = True) -> str:
    """Check ``path`` against ``expected``; :class:`ChecksumError` names file, expected, actual."""
    path = Path(path)
    actual = file_digest(path, expected.algo, memo=memo)
    if actual.lower() != expected.value.lower():
        raise ChecksumError(
            f"{path}: {expected.algo} checksum mismatch: expected {expected.value}, "
            f"actual {actual}. The file is corrupt, truncated or not the official one; "
            "delete it and put a good copy in its place."
        )
    return actual


# --------------------------------------------------------------------------------------
# Resources: where a dataset's files can be
# --------------------------------------------------------------------------------------
@dataclass(eq=False)
class Resource:
    """One downloadable piece of a dataset (see the module docstring).

    ``marker`` is a path relative to the data root that identifies it (file or folder);
    the root is looked for at ``<base>/<folder>`` for each base (the data dir and its
    ``subdirs``) and each entry of ``folders`` ("" = the base itself), and inside an
    extracted archive at ``<extracted>/<folder>``. ``archives`` maps accepted archive
    names to their known checksum (verified strictly) or ``None``. ``validate(root, memo)``
    runs on a freshly extracted root before it is renamed into place and returns a
    description of what it verified (or ``None``).
    """

    dataset: str
    key: str
    marker: str
    folders: tuple[str, ...]
    archives: dict[str, Checksum | None] = field(default_factory=dict)
    url: str | None = None
    download_name: str | None = None
    subdirs: tuple[str, ...] = ()
    validate: Callable[[Path, bool], str | None] | None = None
    description: str = ""

    @property
    def download_checksum(self) -> Checksum | None:
        return self.archives.get(self.download_name) if self.download_name else None


@dataclass
class Candidate:
    """A local copy found by :func:`locate` (not yet verified or extracted)."""

    path: Path  # a data root (kind "folder") or an archive file
    kind: str  # "folder" or "archive"


@dataclass
class Located:
    """A usable data root and where it came from."""

    root: Path
    origin: Path
    kind: str  # "folder", "archive" or "download"
    checksum: str  # "verified" or "unverified"
    detail: str
    archive_sha256: str | None = None

    def meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": str(self.origin),
            "source_kind": self.kind,
            "root": str(self.root),
            "checksum": self.checksum,
            "checksum_detail": self.detail,
        }
        if self.archive_sha256:
            out["archive_sha256"] = self.archive_sha256
        return out


def _bases(resource: Resource, data_dir_: Path) -> list[Path]:
    return [data_dir_, *(data_dir_ / s for s in resource.subdirs)]


def search_places(resource: Resource, data_dir_: str | os.PathLike | None = None) -> list[str]:
    """Every place :func:`locate` looks, one line per folder (for error messages)."""
    d = data_dir(data_dir_)
    places = []
    for base in _bases(resource, d):
        wanted = [
            f"{folder}/{resource.marker}" if folder else resource.marker
            for folder in resource.folders
        ]
        places.append(f"{base}/: {', '.join([*wanted, *resource.archives])}")
    if resource.download_name:
        places.append(str(cache_dir() / "downloads" / resource.download_name))
    return places


def locate(resource: Resource, data_dir_: str | os.PathLike | None = None) -> Candidate | None:
    """The first local copy (extracted folder, then archive) in the data dir, or None."""
    d = data_dir(data_dir_)
    for base in _bases(resource, d):
        for folder in resource.folders:
            root = base / folder if folder else base
            if (root / resource.marker).exists():
                return Candidate(root, "folder")
        for name in resource.archives:
            p = base / name
            if p.is_file():
                return Candidate(p, "archive")
    dl = cache_dir() / "downloads" / (resource.download_name or "")
    if resource.download_name and dl.is_file():
        return Candidate(dl, "archive")
    return None


def prepare(resource: Resource, cand: Candidate) -> Located:
    """Turn a :class:`Candidate` into a data root (verifying and extracting archives)."""
    if cand.kind == "folder":
        return Located(
            cand.path, cand.path, "folder", "unverified", "extracted folder (not checksummed)"
        )
    return open_archive(resource, cand.path)


def fetch(
    resource: Resource,
    data_dir_: str | os.PathLike | None = None,
    also_searched: Sequence[str] = (),
    hint: str = "",
) -> Located:
    """Local copy, else download, else :class:`MissingDataError` (see module docstring)."""
    cand = locate(resource, data_dir_)
    if cand is not None:
        return prepare(resource, cand)
    problem = "no official download is known"
    if resource.url:
        if os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no"):
            problem = f"downloads are switched off (${OFFLINE_ENV} is set)"
        else:
            try:
                path = download_resource(resource, data_dir_)
            except _DownloadFailed as e:
                problem = f"downloading {resource.url} failed: {e}"
            else:
                located = open_archive(resource, path)
                located.kind = "download"
                return located
    raise missing_data_error(resource, data_dir_, problem, also_searched, hint)


def missing_data_error(
    resource: Resource,
    data_dir_: str | os.PathLike | None,
    problem: str,
    also_searched: Sequence[str] = (),
    hint: str = "",
) -> MissingDataError:
    d = data_dir(data_dir_)
    places = [*also_searched, *search_places(resource, data_dir_)]
    lines = [
        f"{resource.dataset}: no local copy found ({problem}).",
        "Searched:",
        *(f"  {p}" for p in dict.fromkeys(places)),
        "To use a local copy, put the archive or its extracted folder in a directory and point "
        f"detox at it: set DETOX_DATA_DIR=/path/to/dir or pass --data-dir /path/to/dir "
        f"(data directory now: {d}).",
    ]
    if hint:
        lines.append(hint)
    if resource.url:
        lines.append(f"Official download: {resource.url}")
    return MissingDataError("\n".join(lines))


# --------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------
class _DownloadFailed(Exception):
    pass


def _timeout() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def _writable_dir(path: Path) -> bool:
    """Whether ``path`` exists writable, or could be created (nothing is created here)."""
    p = path
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK)


def download(url: str, dest: Path, checksum: Checksum | None = None) -> Path:
    """Stream ``url`` to ``dest`` (temp file + rename) with a progress bar; verify it."""
    from tqdm.auto import tqdm

    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    hasher = hashlib.new(checksum.algo, usedforsecurity=False) if checksum else None
    req = urllib.request.Request(url, headers={"User-Agent": "detox (dataset download)"})
    log.warning("detox: downloading %s to %s", url, dest)
    try:
        with urllib.request.urlopen(req, timeout=_timeout()) as resp:
            dest.parent.mkdir(parents=True, exist_ok=True)
            total = int(resp.headers.get("Content-Length") or 0) or None
            with (
                open(tmp, "wb") as f,
                tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None) as bar,
            ):
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    if hasher:
                        hasher.update(chunk)
                    bar.update(len(chunk))
                size = f.tell()
            if total is not None and size != total:
                raise _DownloadFailed(f"incomplete download ({size} of {total} bytes)")
    except _DownloadFailed:
        tmp.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError, ValueError) as e:  # incl. timeouts, HTTP errors
        tmp.unlink(missing_ok=True)
        raise _DownloadFailed(str(e)) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if checksum and hasher and hasher.hexdigest() != checksum.value.lower():
        tmp.unlink(missing_ok=True)
        raise ChecksumError(
            f"{url}: downloaded file's {checksum.algo} checksum mismatch: expected "
            f"{checksum.value}, actual {hasher.hexdigest()} (nothing was kept)"
        )
    os.replace(tmp, dest)
    return dest


def download_resource(resource: Resource, data_dir_: str | os.PathLike | None = None) -> Path:
    assert resource.url and resource.download_name
    d = data_dir(data_dir_)
    target = d if _writable_dir(d) else cache_dir() / "downloads"
    return download(resource.url, target / resource.download_name, resource.download_checksum)


# --------------------------------------------------------------------------------------
# Atomic extraction
# --------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _clean_stale(
    parent: Path, final_name: str, min_age_s: float = 600.0, max_age_s: float = 86400.0
) -> None:
    """Remove temp folders left by killed extractions into ``final_name``.

    A temp folder is stale when its process is gone and it is older than ``min_age_s``
    (the age guards against caches shared between PID namespaces), or older than
    ``max_age_s``. Stale folders are never loaded in any case (their names differ).
    """
    prefix = f".{final_name}.tmp-"
    for p in parent.glob(f"{prefix}*"):
        try:
            pid = int(p.name[len(prefix) :].split("-", 1)[0])
            age = time.time() - p.stat().st_mtime
        except (ValueError, OSError):
            continue
        if pid == os.getpid():
            continue
        if (age > min_age_s and not _pid_alive(pid)) or age > max_age_s:
            shutil.rmtree(p, ignore_errors=True)


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def _safe_zip_name(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return not (p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]))


def unpack(archive: Path, dest: Path) -> None:
    """Unpack a tar (any compression) or zip archive into ``dest`` safely."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                bad = [n for n in zf.namelist() if not _safe_zip_name(n)]
                if bad:
                    raise DataError(
                        f"{archive}: refused to extract member {bad[0]!r} "
                        "(absolute path or '..' would write outside the target folder)"
                    )
                zf.extractall(dest)
        else:
            with tarfile.open(archive, "r:*") as tf:
                tf.extractall(dest, filter="data")
    except DataError:
        raise
    except tarfile.FilterError as e:
        raise DataError(f"{archive}: refused to extract an unsafe member ({e})") from e
    except OSError as e:
        if e.errno in _WRITE_ERRNOS:  # the archive is fine, the cache is not writable/full
            raise DataError(f"{archive}: cannot write the extracted files into {dest} ({e})") from e
        raise DataError(
            f"{archive}: cannot extract, the archive is truncated or corrupt "
            f"({type(e).__name__}: {e}). Delete it and get a fresh copy."
        ) from e
    except Exception as e:  # ReadError, EOFError, LZMAError, zlib.error, BadZipFile, ...
        raise DataError(
            f"{archive}: cannot extract, the archive is truncated or corrupt "
            f"({type(e).__name__}: {e}). Delete it and get a fresh copy."
        ) from e


def _find_root(extracted: Path, resource: Resource) -> Path | None:
    for folder in (*resource.folders, ""):
        root = extracted / folder if folder else extracted
        if (root / resource.marker).exists():
            return root
    return None


def extract(archive: Path, resource: Resource, sha256: str, checks: list[str]) -> Path:
    """Extract ``archive`` once into the cache (atomically); return the extracted folder."""
    parent = cache_dir() / "extracted"
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / f"{resource.key}-{sha256[:12]}"
    if (final / STAMP).is_file():
        return final
    _clean_stale(parent, final.name)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{final.name}.tmp-{os.getpid()}-"))
    with contextlib.suppress(OSError):
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
    log.warning("detox: extracting %s into %s (first use only)", archive, final)
    try:
        unpack(archive, tmp)
        root = _find_root(tmp, resource)
        if root is None:
            raise DataError(
                f"{archive}: the archive does not contain the expected {resource.dataset} "
                f"files ({'/'.join(x for x in (resource.folders[0], resource.marker) if x)})"
            )
        if resource.validate is not None:
            done = resource.validate(root, False)
            if done:
                checks.append(done)
        stamp = {
            "archive": str(archive),
            "archive_sha256": sha256,
            "root": str(root.relative_to(tmp)),
            "checks": checks,
            "extracted_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (tmp / STAMP).write_text(json.dumps(stamp, indent=2), encoding="utf-8")
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / STAMP).is_file():  # not a concurrent extraction that won
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, DataError) or not isinstance(e, Exception):
            raise
        raise DataError(f"{archive}: extraction into {final} failed ({e})") from e
    return final


def open_archive(resource: Resource, archive: Path) -> Located:
    """Verify a local archive (known checksum), extract it (cached) and locate its root."""
    known = resource.archives.get(archive.name)
    algos = ["sha256"] + ([known.algo] if known and known.algo != "sha256" else [])
    try:
        digests = file_digests(archive, algos)
    except OSError as e:
        raise DataError(f"{archive}: cannot read ({e})") from e
    checks = []
    if known:
        verify_file(archive, known)
        checks.append(f"{archive.name} {known.algo} matches the known value")
    final = extract(archive, resource, digests["sha256"], list(checks))
    try:
        stamp = json.loads((final / STAMP).read_text(encoding="utf-8"))
        root = final / stamp.get("root", ".")
        checks = list(stamp.get("checks", checks))
    except (OSError, ValueError):
        root = _find_root(final, resource) or final
    if not (root / resource.marker).exists():
        raise DataError(f"{final}: extracted copy is incomplete; delete this folder and retry")
    return Located(
        root=root,
        origin=archive,
        kind="archive",
        checksum="verified" if checks else "unverified",
        detail="; ".join(checks) if checks else f"{archive.name}: no known checksum",
        archive_sha256=digests["sha256"],
    )
