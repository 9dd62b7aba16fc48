"""The ``detox`` command. Each sub-command lives in its own module and registers itself.

Common options (``--device``, ``--data-dir``, ``--seed``, ``--preset``, ``--set``) are added
by :func:`add_common`. Errors detox raises on purpose, and the file system's, print as one
line, not a traceback; any other error prints one line asking for a report (exit code 3;
``DETOX_DEBUG=1`` re-raises it).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable

from detox.errors import DetoxError
from detox.registry import Registry

Command = Callable[[argparse._SubParsersAction], None]
COMMANDS: Registry[Command] = Registry("command")


def int_at_least(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= lo`` (and ``<= hi``), else a one-line error
    naming the option (argparse adds it), the value and what is expected."""
    want = f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {want}, got {value}")
        return value

    parse.__name__ = want  # argparse names the type in "invalid ... value" messages
    return parse


def float_in(lo: float, hi: float, lo_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite float in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    want = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text}")
        return value

    parse.__name__ = want
    return parse


positive_int = int_at_least(1)
seed_int = int_at_least(0, 2**63 - 1)  # every command: torch's generator takes < 2**63


def add_common(p: argparse.ArgumentParser, preset: bool = True, out: bool = False) -> None:
    from detox.config import PRESET_NAMES
    from detox.utils.device import DEVICE_CHOICES

    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="where to compute")
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder holding the datasets (archives or extracted); default $DETOX_DATA_DIR",
    )
    p.add_argument("--seed", type=seed_int, default=0, help="seed of every random choice")
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
        p.add_argument("--out", required=True, help="output folder (new or empty)")
        add_force(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing --out folder that detox wrote (never an input)",
    )


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
    except OSError as e:  # the file system's refusal: name the file, not the call stack
        where = e.filename if e.filename is not None else ""
        what = e.strerror or str(e)
        print(f"detox {args.command}: error: {where}{': ' if where else ''}{what}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"detox {args.command}: error: out of memory", file=sys.stderr)
        return 2
    except Exception as e:
        if os.environ.get("DETOX_DEBUG"):
            raise
        print(
            f"detox {args.command}: error: {type(e).__name__}: {e} (an unexpected error: "
            "please report it; DETOX_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
