"""``detox poison`` (write a PoisonedSet artefact), ``detox show`` (draw it) and
``detox attack fit`` (build a learned attack's artefact, and export it as plain files)."""

from __future__ import annotations

import argparse
from pathlib import Path

from detox.cli import COMMANDS, add_common, float_in, positive_int, seed_int


def add_attack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="cifar10", help="registered name or a path")
    p.add_argument(
        "--attack",
        default=None,
        help="attack spec(s), comma-separated, e.g. badnets,blended or badnets:ratio=0.05",
    )
    p.add_argument("--suite", default=None, help="named multi-attack suite, e.g. badloss-cifar10")
    p.add_argument(
        "--ratio",
        type=float_in(0.0, 1.0, lo_open=True),
        default=None,
        help="poisoning ratio of every attack given",
    )
    p.add_argument(
        "--target", default=None, help="target class of every attack given (or 'random')"
    )


def attack_specs(args: argparse.Namespace):
    """The attack specs of ``--attack``/``--suite`` with ``--ratio``/``--target`` applied."""
    from detox.attacks import parse_attacks

    specs = parse_attacks(args.attack) if args.attack else []
    for s in specs:
        if args.ratio is not None and s.ratio is None:
            s.ratio = args.ratio
            s.__post_init__()
        if args.target is not None and s.target is None:
            s.target = args.target
            s.__post_init__()
    if args.suite:
        from detox.attacks.suites import check_suite_dataset

        for name in args.suite.split(","):
            check_suite_dataset(name.strip(), args.dataset)
        specs += parse_attacks(args.suite)
    return specs


@COMMANDS.register("poison")
def register_poison(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("poison", help="poison a dataset and write the PoisonedSet artefact")
    add_attack_args(p)
    add_common(p, out=True)
    p.set_defaults(func=run_poison)


@COMMANDS.register("attack")
def register_attack(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attack", help="build learned attacks' artefacts")
    asub = p.add_subparsers(dest="attack_command", required=True, metavar="ACTION")
    fit = asub.add_parser(
        "fit",
        help="build (or find in the cache) the artefacts of the attacks given, as a run "
        "with the same dataset, preset and seed would, and optionally export them",
    )
    add_attack_args(fit)
    fit.add_argument(
        "--export",
        default=None,
        metavar="DIR",
        help="also copy each artefact to DIR/<attack> (safetensors + JSON; `detox cache "
        "import DIR/<attack>` installs it elsewhere)",
    )
    add_common(fit)
    fit.set_defaults(func=run_attack_fit)


def run_attack_fit(args: argparse.Namespace) -> int:
    """Poison as ``detox run`` would (same data, preset and seed, so the same artefact keys),
    then report every artefact the attacks read: built now or found in the cache."""
    import time

    from detox.cache import Store
    from detox.config import parse_overrides
    from detox.errors import ConfigError
    from detox.pipeline import make_poisoned_set, resolve_configs
    from detox.utils.device import resolve_device

    specs = attack_specs(args)
    if not specs:
        raise ConfigError("give --attack and/or --suite")
    if args.export and Path(args.export).exists() and any(Path(args.export).iterdir()):
        raise ConfigError(f"--export {args.export}: expected a new or empty folder")
    dcfg, _, ecfg = resolve_configs(
        args.preset, args.dataset, args.seed, parse_overrides(args.overrides)
    )
    start = time.perf_counter()
    pset = make_poisoned_set(
        dcfg, specs, args.seed, args.data_dir, resolve_device(args.device), ecfg.test_limit,
        scale=args.preset,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    store = Store("artefacts")
    found = 0
    for rec in pset.attacks:
        for key in rec.get("artefacts", []):
            found += 1
            line = f"{rec['name']}: artefact {key} (preset {rec.get('preset') or 'default'})"
            if args.export:
                dest = store.export(key, Path(args.export) / rec["name"])
                line += f" -> {dest}"
            print(line)
    if not found:
        names = ", ".join(r["attack"] for r in pset.attacks)
        print(f"{names}: no artefact (fixed triggers are made from the seed alone)")
    print(f"done in {seconds:.1f} s")
    return 0


@COMMANDS.register("show")
def register_show(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="draw clean vs poisoned examples of an artefact (PNG)")
    p.add_argument("artefact", help="folder written by `detox poison`")
    p.add_argument("--out", default=None, help="PNG path (default: <artefact>/samples.png)")
    p.add_argument("--n", type=positive_int, default=4, help="examples per attack")
    p.add_argument(
        "--diffusion",
        default=None,
        help="also draw the SampDetox figure (poisoned, stage 1, trigger map, purified) "
        "with this diffusion model (folder or hub id)",
    )
    p.add_argument(
        "--sampdetox",
        action="store_true",
        help="draw the SampDetox figure with the diffusion model detox ships for the "
        "artefact's dataset (see `detox data info`)",
    )
    p.add_argument("--defense-preset", default="paper", help="SampDetox preset for the figure")
    p.add_argument("--seed", type=seed_int, default=0)
    p.set_defaults(func=run_show)


def run_poison(args: argparse.Namespace) -> int:
    from detox.config import asdict, parse_overrides
    from detox.pipeline import make_poisoned_set, resolve_configs
    from detox.runs import check_output, output_folder
    from detox.utils.device import resolve_device

    specs = attack_specs(args)
    if not specs:
        from detox.errors import ConfigError

        raise ConfigError("give --attack and/or --suite")
    dcfg, _, ecfg = resolve_configs(
        args.preset, args.dataset, args.seed, parse_overrides(args.overrides)
    )
    device = resolve_device(args.device)
    check_output(args.out, [args.dataset], args.force)  # fail before the work
    pset = make_poisoned_set(
        dcfg, specs, args.seed, args.data_dir, device, ecfg.test_limit, scale=args.preset
    )
    with output_folder(args.out, [args.dataset], args.force) as run:
        run.write_config(
            "poison",
            {
                "preset": args.preset,
                "data": asdict(dcfg),
                "experiment": asdict(ecfg),
                "attacks": pset.attacks,
                "seed": args.seed,
            },
        )
        pset.save(run.path)
        run.write_summary(pset.summary())
    print(f"poisoned set: {pset.summary()} -> {run.path}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from detox.data import PoisonedSet
    from detox.plots.samples import attack_grid

    out = Path(args.out) if args.out else Path(args.artefact) / "samples.png"
    if out.suffix.lower() != ".png" or out.is_dir():
        from detox.errors import ConfigError

        raise ConfigError(f"--out {args.out}: expected a .png file path")
    pset = PoisonedSet.load(args.artefact)
    attack_grid(pset, out, n=args.n)
    print(f"wrote {out}")
    if args.diffusion or args.sampdetox:
        from detox.data import to_float
        from detox.defenses.purifiers import build_purifier
        from detox.plots.purification import sampdetox_figure

        over = {"diffusion": args.diffusion} if args.diffusion else {}
        pur = build_purifier("sampdetox", args.defense_preset, **over)
        pur.use_dataset_defaults(pset.source.get("dataset") or pset.source.get("name"))
        rows = {}
        for name, t in pset.triggered.items():
            r = pur.purify(to_float(t.x[:1]), seed=args.seed, return_intermediates=True)
            rows[name] = {"x": to_float(t.x[0]), "stage1": r.stage1[0], "grey": r.grey[0],
                          "final": r.x[0]}  # fmt: skip
        fig = out.with_name(out.stem + "_sampdetox.png")
        sampdetox_figure(rows, fig, f"SampDetox ({args.defense_preset})")
        print(f"wrote {fig}")
    return 0
