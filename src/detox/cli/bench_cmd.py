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

from detox.cli import COMMANDS, positive_int


def add_bench_options(p: argparse.ArgumentParser, out_default: str | None = None) -> None:
    from detox.bench.runner import EXECUTORS
    from detox.utils.device import DEVICE_CHOICES

    if out_default:
        p.add_argument("--out", default=out_default, help=f"output folder ({out_default})")
    else:
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
    p.add_argument(
        "--only",
        default=None,
        help="run only the cells whose id matches these comma-separated globs, e.g. "
        "'*badnets*' (finished cells of the others are kept and tabulated)",
    )
    p.add_argument(
        "--tables-only",
        action="store_true",
        help="compute nothing: tabulate the finished cells in --out and rewrite the report",
    )
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: local)")
    p.add_argument(
        "--workers", type=positive_int, default=None, help="local Ray workers (default: CPUs)"
    )
    p.add_argument(
        "--threads",
        type=positive_int,
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


def execute(cfg, args: argparse.Namespace, return_result: bool = False):
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
        only=args.only,
        tabulate_only=args.tables_only,
    )
    print((res["markdown"] or "(no finished cells)").rstrip())
    print(
        f"\n{res['computed']} cell(s) computed, {res['skipped']} already finished, "
        f"{res['left']} left for another run; {res['seconds']:.0f} s"
    )
    print(f"tables: {args.out}/tables.md")
    print(f"report: {args.out}/report.html")
    return (0, res) if return_result else 0


# ---------------------------------------------------------------------------------------
# detox demo

DEMO_SMOKE = {"train_subset": 300, "test_subset": 100, "test_limit": 60, "epochs": 1}
# On a GPU: the full `quick` scale (demo.toml's [set] dropped: AirNet full width, 5 epochs,
# 50,000 training and 10,000 test images), SampDetox's faithful code chain compiled in bf16
# and BaDLoss's `quick` pre-training (10 epochs) in log-loss space (AirNet fits some
# triggers faster than clean data; the badloss module docstring)
DEMO_GPU = {
    "sampdetox": {"stride": 1, "amp": True, "compile": True},
    "badloss": {"trajectory_space": "log-loss"},
}


@COMMANDS.register("demo")
def register_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="poison CIFAR-10 (BadNets, Blended, BaDLoss's seven-attack suite), run "
        "UltraClean, SampDetox and BaDLoss, print the table and write the HTML report "
        "(about 15 minutes on 2 CPU cores; the full `quick` scale on a GPU)",
    )
    add_bench_options(p, out_default="runs/demo")
    p.add_argument(
        "--diffusion",
        default=None,
        help="diffusion model for SampDetox (folder or hub id; default: the packaged one, "
        "if installed; without one SampDetox is left out)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny version (300 images, 1 epoch, small CNN) that checks the wiring in ~2 min",
    )
    p.add_argument("--print-config", action="store_true", help="print the grid and exit")
    p.set_defaults(func=run_demo)


def demo_config(
    diffusion: str | None, smoke: bool = False, packaged: bool = False, gpu: bool = False
):
    """The packaged demo grid (``detox/bench/demo.toml``), with SampDetox pointed at
    ``diffusion``; without it SampDetox uses the shipped model (``packaged``) or is left
    out when there is none. ``smoke``: toy scale; ``gpu``: the full ``quick`` scale
    (:data:`DEMO_GPU`)."""
    import copy
    import tomllib
    from importlib import resources

    from detox.bench.config import parse_bench

    data = tomllib.loads(resources.files("detox.bench").joinpath("demo.toml").read_text())
    data = copy.deepcopy(data)
    if smoke:
        data["preset"] = "smoke"
        data["set"] = dict(DEMO_SMOKE)
        data["name"] = "demo-smoke"
    elif gpu:
        data.pop("set", None)
        data["name"] = "demo-gpu"
    for g in data.get("grid", []):
        ds = g.setdefault("defense_set", {})
        if gpu and not smoke:
            for d in g.get("defenses", []):
                if d in DEMO_GPU:
                    ds[d] = dict(DEMO_GPU[d])
        if "sampdetox" in g.get("defenses", []):
            if diffusion:
                ds.setdefault("sampdetox", {})["diffusion"] = diffusion
            elif not packaged:
                g["defenses"] = [d for d in g["defenses"] if d != "sampdetox"]
                ds.pop("sampdetox", None)
        if smoke and "badloss" in ds:
            ds["badloss"]["pretrain_epochs"] = DEMO_SMOKE["epochs"]
        for d in [d for d, v in ds.items() if not v]:
            ds.pop(d)
        if not ds:
            g.pop("defense_set")
    return parse_bench(
        data, "detox/bench/demo.toml" + (" (smoke)" if smoke else " (gpu)" if gpu else "")
    ), data


def describe_demo(data: dict, n_cells: int, device: str) -> str:
    """The demo's scale in one paragraph, printed before it starts."""
    sets = data.get("set") or {}
    scale = ", ".join(f"{k}={v}" for k, v in sets.items()) or "the full `quick` scale"
    lines = [
        f"detox demo on {device}: {', '.join(data['datasets'])}, preset {data['preset']}, "
        f"{n_cells} cells; settings: {scale}"
    ]
    for g in data.get("grid", []):
        for d in g.get("defenses", []):
            over = g.get("defense_set", {}).get(d, {})
            extra = ", ".join(f"{k}={v}" for k, v in over.items())
            pre = g.get("defense_preset")
            lines.append(
                f"  {d}{f' [{pre}]' if pre else ''}{f' ({extra})' if extra else ''} on "
                + ", ".join(g["attacks"])
            )
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    import sys

    from detox.bench.tables import effect_lines
    from detox.diffusion import packaged_diffusion
    from detox.utils.device import resolve_device

    packaged = packaged_diffusion("cifar10") is not None
    if args.diffusion is None and not packaged:
        print(
            "detox demo: no diffusion model for SampDetox (pass --diffusion PATH, e.g. one "
            "written by `detox diffusion train`); running the demo without it",
            file=sys.stderr,
        )
    device = str(resolve_device(args.device))
    gpu = device.startswith("cuda")
    cfg, data = demo_config(args.diffusion, smoke=args.smoke, packaged=packaged, gpu=gpu)
    if args.print_config:
        print(describe_demo(data, len(cfg.cells()), device))
        for c in cfg.cells():
            print(c.id)
        return 0
    print(describe_demo(data, len(cfg.cells()), device), flush=True)
    rc, res = execute(cfg, args, return_result=True)
    lines = effect_lines(res["tables"]) if res else []
    if lines:
        print("\nAt a glance (each defense against the undefended victim of the same row):")
        for line in lines:
            print(f"  {line}")
    return rc
