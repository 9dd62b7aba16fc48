"""Run folders: every command that computes writes ``config.json`` and ``summary.json``.

``config.json`` is fully resolved (every setting, the seed, package versions, the
machine and the data's checksums); ``summary.json`` holds the figures. Both are written
atomically, so a killed run never leaves a half-written file.

:func:`output_folder` is how a command gets its folder: it refuses an ``--out`` that is a
file, that is (or contains) one of the command's inputs, or that already holds something
(unless ``force``, and then only a folder detox wrote); the command writes into a hidden
staging folder beside it, which replaces ``--out`` only when the command succeeds, so a
failed command leaves no run folder behind and a replaced one is never half-overwritten.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from detox import __version__
from detox.errors import ConfigError
from detox.utils.io import atomic_write_json

# files that mark a folder as written by detox (a run, an artefact, a checkpoint)
DETOX_MARKERS = ("config.json", "manifest.json", "model.json", "bench.json")


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {
        "detox": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


class RunDir:
    """An output folder for one command."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.path = Path(out)
        self.path.mkdir(parents=True, exist_ok=True)
        self.started = time.time()

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def write_config(self, command: str, config: dict[str, Any]) -> Path:
        return atomic_write_json(
            self.path / "config.json",
            {"command": command, **config, "environment": environment()},
        )

    def write_summary(self, summary: dict[str, Any]) -> Path:
        summary = {**summary, "wall_seconds": round(time.time() - self.started, 2)}
        return atomic_write_json(self.path / "summary.json", summary)


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_inputs(path: Path, out: Any, inputs: Iterable[Any], option: str) -> None:
    for item in inputs:
        if item is None or not Path(item).expanduser().exists():
            continue
        if _is_within(Path(item).expanduser().resolve(), path):
            raise ConfigError(
                f"{option} {out}: would overwrite the input {item}; choose another folder"
            )


def check_output(
    out: str | os.PathLike,
    inputs: Iterable[str | os.PathLike | None] = (),
    force: bool = False,
    option: str = "--out",
) -> Path:
    """Validate an output folder (see :func:`output_folder`); returns it resolved."""
    path = Path(out).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {out}: is a file; expected a folder (new or empty)")
    _check_inputs(path, out, inputs, option)
    if path.is_dir() and any(path.iterdir()):
        if not force:
            raise ConfigError(
                f"{option} {out}: already exists and is not empty; choose a new folder or "
                "pass --force to replace it"
            )
        if not any((path / m).is_file() for m in DETOX_MARKERS):
            raise ConfigError(
                f"{option} {out}: --force replaces only a folder detox wrote (holding one of "
                f"{', '.join(DETOX_MARKERS)}); this one is not, so it is left alone"
            )
    return path


@contextlib.contextmanager
def output_folder(
    out: str | os.PathLike,
    inputs: Iterable[str | os.PathLike | None] = (),
    force: bool = False,
    option: str = "--out",
) -> Iterator[RunDir]:
    """A :class:`RunDir` for a command's ``--out``, written atomically as a whole.

    Refuses (:class:`ConfigError`, before anything is written) an ``out`` that is a file,
    that is one of ``inputs`` or contains one, or that exists and is not empty (unless
    ``force``, which replaces only a folder holding a detox marker file). The command
    writes into ``.<name>.partial-<pid>`` beside ``out``; on success that folder takes
    ``out``'s place (the replaced one is removed), on any failure (an exception, Ctrl-C)
    it is deleted and ``out`` is as it was.
    """
    final = check_output(out, inputs, force, option)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = final.parent / f".{final.name}.partial-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    run = RunDir(stage)
    try:
        yield run
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.replaced-{os.getpid()}"
        os.replace(final, old)
    os.replace(stage, final)
    run.path = final
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def resumable_output(
    out: str | os.PathLike,
    state_file: str,
    inputs: Iterable[str | os.PathLike | None] = (),
    force: bool = False,
    option: str = "--out",
) -> Iterator[RunDir]:
    """An output folder that a long command fills in place and resumes from
    (``state_file`` present): such a folder is reused; any other non-empty folder is
    refused as by :func:`output_folder` (``force`` empties one detox wrote). A failure
    before ``state_file`` exists removes the folder if this call created it."""
    path = Path(out).expanduser().resolve()
    resume = (path / state_file).is_file()
    if not resume:
        check_output(out, inputs, force, option)
        if path.is_dir() and any(path.iterdir()):  # force: a detox folder, emptied
            shutil.rmtree(path)
    else:
        _check_inputs(path, out, inputs, option)
    created = not path.exists()
    run = RunDir(path)
    try:
        yield run
    except BaseException:
        if created and not (path / state_file).is_file():
            shutil.rmtree(path, ignore_errors=True)
        raise
