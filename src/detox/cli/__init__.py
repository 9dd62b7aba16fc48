"""The ``detox`` command. Each sub-command lives in its own module and registers itself.

Common options (``--device``, ``--data-dir``, ``--seed``, ``--preset``, ``--set``) are added
by :func:`add_common`. Errors detox raises on purpose print as one line, not a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from detox.errors import DetoxError
from detox.registry import Registry

Command = Callable[[argparse._SubParsersAction], None]
COMMANDS: Registry[Command] = Registry("command")


def add_common(p: argparse.ArgumentParser, preset: bool = True, out: bool = False) -> None:
    from detox.config import PRESET_NAMES
    from detox.utils.device import DEVICE_CHOICES

    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="where to compute")
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder holding the datasets (archives or extracted); default $DETOX_DATA_DIR",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    if preset:
        p.add_argument(
            "--preset", default="quick", choices=PRESET_NAMES, help="named set of settings"
        )
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            metavar="KEY=VALUE",
            help="override any setting of the preset (repeatable), e.g. --set epochs=3",
        )
    if out:
        p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from detox import __version__
    from detox.cli import commands  # noqa: F401  (registers the sub-commands)

    parser = argparse.ArgumentParser(
        prog="detox",
        description="Backdoor defenses for image classifiers: clean training sets, purify "
        "inputs, measure CA / PA / ASR / detection.",
    )
    parser.add_argument("--version", action="version", version=f"detox {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS.names():
        COMMANDS.get(name)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "data_dir", None):
        from detox.data.paths import set_data_dir

        set_data_dir(args.data_dir)
    try:
        return int(args.func(args) or 0)
    except DetoxError as e:
        print(f"detox {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
