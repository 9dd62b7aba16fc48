"""Run a bench grid cell by cell, resumably, on one machine or as Ray tasks.

Layout of the output folder::

    OUT/bench.json                 the resolved grid (written first)
    OUT/cells/<cell>.json          one result per cell, written atomically when it finishes
    OUT/cells/<cell>/              the cell's files: scores CSV, histogram, ROC, trajectories
    OUT/groups/<group>/samples.png clean vs poisoned examples of each victim's training set
    OUT/tables.{md,csv,json}       the tables (see :mod:`detox.bench.tables`)
    OUT/report.html                the self-contained report (see :mod:`detox.bench.report`)

A finished cell is never computed again: ``--resume`` skips every cell whose JSON exists.
Victims come from the shared victim cache (keyed by a content hash of data, training
config and code), so a victim is trained once and reused by every defense and every
resumed or distributed run that needs it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detox.bench.config import NO_DEFENSE, BenchConfig, Cell, Group
from detox.errors import ConfigError
from detox.registry import Registry
from detox.utils.io import atomic_write_json, read_json

EXECUTORS: Registry[Any] = Registry("executor")


@dataclasses.dataclass
class BenchContext:
    """What every cell needs besides its own settings (picklable, for Ray)."""

    out: str
    device: str = "auto"
    data_dir: str | None = None
    progress: bool = False
    threads: int | None = None  # torch threads per task (None: leave as is)


def cell_path(out: str | os.PathLike, cell: Cell) -> Path:
    return Path(out) / "cells" / f"{cell.id}.json"


def finished_cells(out: str | os.PathLike, cells: list[Cell]) -> list[Cell]:
    return [c for c in cells if cell_path(out, c).is_file()]


# ---------------------------------------------------------------------------------------
# one group / one cell (module-level functions: Ray ships them to workers)

_LOADED: dict[str, Any] = {}  # group id -> (pset, victim, info, tcfg, ecfg): one per process


def _setup(ctx: BenchContext) -> None:
    if ctx.threads:
        import torch

        torch.set_num_threads(int(ctx.threads))
    if ctx.data_dir:
        from detox.data.paths import set_data_dir

        set_data_dir(ctx.data_dir)


def load_group(group: Group, ctx: BenchContext) -> tuple[Any, Any, dict[str, Any], Any, Any]:
    """Poison the group's training set and train (or load the cached) victim."""
    if group.id in _LOADED:
        return _LOADED[group.id]
    from detox.pipeline import make_poisoned_set, resolve_configs, train_victim
    from detox.utils.device import resolve_device

    _setup(ctx)
    device = resolve_device(ctx.device)
    dcfg, tcfg, ecfg = resolve_configs(
        group.preset, group.dataset, group.seed, dict(group.overrides)
    )
    tcfg.progress = ctx.progress
    pset = make_poisoned_set(
        dcfg, group.attack_value, group.seed, ctx.data_dir, device, ecfg.test_limit,
        scale=group.preset,
    )  # fmt: skip
    victim, info = train_victim(pset, tcfg, device, cache=True)
    _LOADED.clear()
    _LOADED[group.id] = (pset, victim, info, tcfg, ecfg)
    return _LOADED[group.id]


def prepare_group(group: Group, ctx: BenchContext) -> dict[str, Any]:
    """Train the group's victim (into the cache) and draw its sample grid."""
    pset, _, info, _, _ = load_group(group, ctx)
    png = Path(ctx.out) / "groups" / group.id / "samples.png"
    if pset.attacks and not png.is_file():
        from detox.plots.samples import attack_grid

        attack_grid(pset, png)
    return {"group": group.id, "victim": _victim_info(info)}


def _victim_info(info: dict[str, Any]) -> dict[str, Any]:
    return {k: info.get(k) for k in ("key", "train_seconds", "images_per_second", "cached")}


def run_cell(cell: Cell, ctx: BenchContext, _after: Any = None) -> dict[str, Any]:
    """Compute one cell and write ``cells/<id>.json`` atomically; returns the result.

    ``_after`` is ignored: it lets Ray schedule the cell after its group's victim.
    """
    from detox.pipeline import evaluate_backdoor, run_defense
    from detox.runs import environment
    from detox.utils.device import resolve_device

    t0 = time.perf_counter()
    pset, victim, info, tcfg, ecfg = load_group(cell.group, ctx)
    device = resolve_device(ctx.device)
    files = Path(ctx.out) / "cells" / cell.id
    files.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "cell": cell.id,
        "group": cell.group.id,
        **dataclasses.asdict(cell),
        "attack_names": pset.attack_names,
        "poisoned": pset.summary(),
        "victim": _victim_info(info),
    }
    if cell.defense == NO_DEFENSE:
        result["kind"] = "none"
        result["evaluation"] = evaluate_backdoor(victim, pset)
    else:
        res = run_defense(
            cell.defense,
            cell.defense_preset,
            pset,
            victim,
            tcfg,
            device,
            cell.seed,
            files,
            progress=ctx.progress,
            cache=True,
            overrides=dict(cell.defense_overrides),
            purify_limit=ecfg.purify_limit,
            detect_only=ecfg.detect_only,
        )
        result["kind"] = res["kind"]
        result["evaluation"] = res["evaluation"]
        if "reference" in res:
            result["reference"] = res["reference"]
        if "detection" in res:
            result["detection"] = res["detection"]
        result["defense_info"] = {
            k: v
            for k, v in res.items()
            if k not in ("evaluation", "detection", "kind", "reference")
        }
    result["seconds"] = round(time.perf_counter() - t0, 2)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    result["environment"] = environment()
    atomic_write_json(cell_path(ctx.out, cell), result)
    return result


# ---------------------------------------------------------------------------------------
# executors


@EXECUTORS.register("local")
class LocalExecutor:
    """Cells one after another in this process, grouped so each victim loads once."""

    def __init__(self, **_: Any) -> None:
        pass

    def run(self, cells: list[Cell], ctx: BenchContext, done: Callable[[dict], None]) -> None:
        for group in _ordered_groups(cells):
            prepare_group(group, ctx)
            for c in cells:
                if c.group.id == group.id:
                    done(run_cell(c, ctx))


@EXECUTORS.register("ray")
class RayExecutor:
    """Cells as Ray tasks: one task per victim, then one task per cell depending on it.

    A local Ray (``workers`` CPUs) by default, or the cluster at ``address``. Tasks share
    the victim cache through the file system (``DETOX_CACHE``), so every node must see
    the same cache and data folders.
    """

    def __init__(self, address: str | None = None, workers: int | None = None, **_: Any):
        try:
            import ray  # noqa: F401
        except ImportError as e:
            raise ConfigError(
                "--executor ray needs Ray: pip install 'detox[ray]' (or pip install ray)"
            ) from e
        self.address = address
        self.workers = workers

    def run(self, cells: list[Cell], ctx: BenchContext, done: Callable[[dict], None]) -> None:
        import ray

        from detox.data.paths import cache_dir

        env = {"DETOX_CACHE": str(cache_dir()), "RAY_USAGE_STATS_ENABLED": "0"}
        if ctx.data_dir:
            env["DETOX_DATA_DIR"] = str(ctx.data_dir)
        started = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False}
            if self.address:
                kw["address"] = self.address
            else:
                kw.update(num_cpus=self.workers or os.cpu_count(), include_dashboard=False)
            ray.init(**kw)
            started = True
        try:
            n = int(self.workers or ray.cluster_resources().get("CPU", 1))
            ctx = dataclasses.replace(
                ctx, threads=ctx.threads or max(1, (os.cpu_count() or 1) // n)
            )
            prep = ray.remote(num_cpus=1)(prepare_group)
            cell_task = ray.remote(num_cpus=1)(run_cell)
            grefs = {g.id: prep.remote(g, ctx) for g in _ordered_groups(cells)}
            pending = [cell_task.remote(c, ctx, grefs[c.group.id]) for c in cells]
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                done(ray.get(ready[0]))
        finally:
            if started:
                ray.shutdown()


def _ordered_groups(cells: list[Cell]) -> list[Group]:
    out: dict[str, Group] = {}
    for c in cells:
        out.setdefault(c.group.id, c.group)
    return list(out.values())


# ---------------------------------------------------------------------------------------
# the whole bench


def run_bench(
    cfg: BenchConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    executor: str = "local",
    device: str = "auto",
    data_dir: str | None = None,
    progress: bool = True,
    ray_address: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    only: str | None = None,
    report: bool = True,
    tabulate_only: bool = False,
) -> dict[str, Any]:
    """Run every cell of ``cfg`` not finished yet; write tables (and the report).

    ``tabulate_only``: compute nothing; tabulate the finished cells and write the report.
    ``only``: comma-separated glob patterns of cell ids (``*badnets*``); the other cells
    are left for another run (tables and report cover every finished cell).

    Returns ``{"results", "tables", "markdown", "computed", "skipped" (finished before),
    "left" (not run: ``only`` / ``tabulate_only``), "seconds"}``.
    """
    from tqdm.auto import tqdm

    from detox.bench.tables import bench_tables, write_bench_tables

    out = Path(out)
    cells = cfg.cells()
    done_before = finished_cells(out, cells)
    if done_before and not resume and not only and not tabulate_only:
        raise ConfigError(
            f"{out} already holds {len(done_before)} finished cell(s) of this bench; pass "
            "--resume to continue it (finished cells are kept), or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        out / "bench.json",
        {**cfg.to_dict(), "cells": [c.id for c in cells], "executor": executor},
    )
    finished = {c.id for c in done_before}
    todo = [] if tabulate_only else [c for c in cells if c.id not in finished]
    if only:
        import fnmatch

        pats = [p.strip() for p in only.split(",") if p.strip()]
        todo = [c for c in todo if any(fnmatch.fnmatch(c.id, p) for p in pats)]
        if not any(fnmatch.fnmatch(c.id, p) for c in cells for p in pats):
            raise ConfigError(f"--only {only!r} matches no cell of this bench")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads={threads}: expected >= 1")
    ctx = BenchContext(str(out), device, data_dir, progress=False, threads=threads)
    ex = EXECUTORS.get(executor)(address=ray_address, workers=workers)
    bar = tqdm(
        total=len(finished) + len(todo),
        initial=len(finished),
        desc=f"bench {cfg.name}",
        unit="cell",
        disable=not progress,
    )
    t0 = time.perf_counter()

    def done(res: dict[str, Any]) -> None:
        bar.update(1)
        bar.set_postfix_str(res["cell"][-40:], refresh=True)

    try:
        if todo:
            ex.run(todo, ctx, done)
    finally:
        bar.close()
    results = [read_json(cell_path(out, c)) for c in cells if cell_path(out, c).is_file()]
    tables = bench_tables(results, cfg.defenses())
    md = write_bench_tables(tables, out)
    if report:
        from detox.bench.report import write_report

        write_report(out, cfg, results, tables)
    return {
        "results": results,
        "tables": tables,
        "markdown": md,
        "computed": len(todo),
        "skipped": len(finished),
        "left": len(cells) - len(finished) - len(todo),
        "seconds": round(time.perf_counter() - t0, 2),
    }
