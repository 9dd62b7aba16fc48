"""``detox bench``: run a grid of datasets x attacks x defenses x seeds from a config file.

    detox bench benchmarks/configs/cifar10-quick.toml --out runs/bench
    detox bench bench.toml --out runs/bench --resume            # continue an interrupted run
    detox bench bench.toml --out runs/bench --executor ray      # cells as local Ray tasks
    detox bench bench.toml --out runs/bench --executor ray --ray-address auto

Writes ``tables.{md,csv,json}``, ``report.html`` and one JSON per cell (see
:mod:`detox.bench.runner` for the layout and docs/benchmark.md for the config format).
"""

from __future__ import annotations

import argparse

from detox.cli import COMMANDS


def add_bench_options(p: argparse.ArgumentParser) -> None:
    from detox.bench.runner import EXECUTORS
    from detox.utils.device import DEVICE_CHOICES

    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a bench in --out: finished cells are kept and not computed again",
    )
    p.add_argument(
        "--executor",
        default="local",
        choices=EXECUTORS.names(),
        help="run cells in this process (local) or as Ray tasks (ray; pip install detox[ray])",
    )
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: local)")
    p.add_argument("--workers", type=int, default=None, help="local Ray workers (default: CPUs)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per cell (default: all cores locally, cores / workers under Ray)",
    )
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="where to compute")
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder holding the datasets (archives or extracted); default $DETOX_DATA_DIR",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@COMMANDS.register("bench")
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a grid of attacks x defenses from a config file")
    p.add_argument("config", help="bench config (.toml, .yaml or .json); see docs/benchmark.md")
    add_bench_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detox.bench.config import load_bench_config

    cfg = load_bench_config(args.config)
    return execute(cfg, args)


def execute(cfg, args: argparse.Namespace) -> int:
    from detox.bench.runner import run_bench

    res = run_bench(
        cfg,
        args.out,
        resume=args.resume,
        executor=args.executor,
        device=args.device,
        data_dir=args.data_dir,
        progress=not args.quiet,
        ray_address=args.ray_address,
        workers=args.workers,
        threads=args.threads,
    )
    print((res["markdown"] or "(no finished cells)").rstrip())
    print(
        f"\n{res['computed']} cell(s) computed, {res['skipped']} already finished, "
        f"{res['seconds']:.0f} s"
    )
    print(f"tables: {args.out}/tables.md")
    print(f"report: {args.out}/report.html")
    return 0
