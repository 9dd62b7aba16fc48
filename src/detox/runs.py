"""Run folders: every command that computes writes ``config.json`` and ``summary.json``.

``config.json`` is fully resolved (every setting, the seed, package versions, the
machine and the data's checksums); ``summary.json`` holds the figures. Both are written
atomically, so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from detox import __version__
from detox.utils.io import atomic_write_json


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
