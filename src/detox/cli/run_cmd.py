"""``detox run``: poison -> train the victim -> evaluate, optionally with defenses.

    detox run --dataset cifar10 --attack badnets,blended --preset quick --out runs/x
    detox run --dataset cifar10 --suite badloss-cifar10 --defense ultraclean --out runs/y

Writes ``config.json``, ``summary.json``, ``results.md`` / ``results.csv`` (rows = attacks,
columns = CA / PA / ASR per model, detection AUROC / TPR / FPR per detector) and, per
detector, ``<name>_scores.csv`` and its histogram and ROC figures.
"""

from __future__ import annotations

import argparse

from detox.cli import COMMANDS, add_common
from detox.cli.attack_cmd import add_attack_args, attack_specs


@COMMANDS.register("run")
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="poison -> victim -> evaluate (with optional defenses)")
    add_attack_args(p)
    p.add_argument(
        "--defense",
        default=None,
        help="defense(s) to run, comma-separated (detectors retrain on the kept examples)",
    )
    p.add_argument(
        "--defense-preset",
        default=None,
        help="preset of the defenses' own settings (default: the run's --preset)",
    )
    p.add_argument(
        "--diffusion",
        default=None,
        help="diffusion model (folder or hub id) for diffusion-based purifiers (sampdetox)",
    )
    add_common(p, out=True)
    p.set_defaults(func=run)


def defense_overrides(name: str, args: argparse.Namespace) -> dict:
    """Settings of a defense's own config given on the command line (``--diffusion`` for
    a defense whose config has a ``diffusion`` setting)."""
    import dataclasses

    from detox.pipeline import defense_kind

    cfg = defense_kind(name).methods().get(name).Config
    if args.diffusion and "diffusion" in {f.name for f in dataclasses.fields(cfg)}:
        return {"diffusion": args.diffusion}
    return {}


def run(args: argparse.Namespace) -> int:
    from detox.config import parse_overrides
    from detox.pipeline import resolve_configs
    from detox.runs import output_folder
    from detox.utils.device import resolve_device

    specs = attack_specs(args)
    dcfg, tcfg, ecfg = resolve_configs(
        args.preset, args.dataset, args.seed, parse_overrides(args.overrides)
    )
    tcfg.progress = not args.quiet
    device = resolve_device(args.device)
    defenses = [d.strip() for d in (args.defense or "").split(",") if d.strip()]
    check_defense_names(defenses)
    with output_folder(args.out, [args.dataset, args.diffusion], args.force) as run_dir:
        md = _run(args, specs, dcfg, tcfg, ecfg, device, defenses, run_dir)
    print(md)
    print(f"-> {run_dir.path}")
    return 0


def check_defense_names(defenses: list[str]) -> None:
    """Unknown defense names fail before any work, listing every defense of every kind."""
    from detox.errors import ConfigError
    from detox.pipeline import defense_names

    known = defense_names()
    for name in defenses:
        if name.lower() not in known:
            raise ConfigError(
                f"--defense {name!r}: unknown defense; expected one of {', '.join(known)}"
            )


def _run(args, specs, dcfg, tcfg, ecfg, device, defenses, run_dir) -> str:
    from detox.bench.tables import attack_table, write_tables
    from detox.config import asdict
    from detox.pipeline import evaluate_backdoor, make_poisoned_set, run_defense, train_victim

    pset = make_poisoned_set(
        dcfg, specs, args.seed, args.data_dir, device, ecfg.test_limit, scale=args.preset
    )
    run_dir.write_config(
        "run",
        {
            "preset": args.preset,
            "device": str(device),
            "data": asdict(dcfg),
            "train": asdict(tcfg),
            "experiment": asdict(ecfg),
            "attacks": pset.attacks,
            "defenses": defenses,
            "defense_preset": args.defense_preset or args.preset,
            "data_source": pset.source,
            "seed": args.seed,
        },
    )
    victim, vinfo = train_victim(pset, tcfg, device, ecfg.cache_victims)
    evaluations = {"no defense": evaluate_backdoor(victim, pset)}
    detection, defense_info = {}, {}
    for name in defenses:
        res = run_defense(
            name,
            args.defense_preset or args.preset,
            pset,
            victim,
            tcfg,
            device,
            args.seed,
            run_dir.path,
            progress=not args.quiet,
            cache=ecfg.cache_victims,
            overrides=defense_overrides(name, args),
            purify_limit=ecfg.purify_limit,
            detect_only=ecfg.detect_only,
        )
        if "reference" in res:  # purify_limit: the undefended victim on the same images
            evaluations[f"no defense ({name}'s images)"] = res["reference"]
        if res["evaluation"] is not None:  # None: detect_only, no retrained model
            evaluations[name] = res["evaluation"]
        if "detection" in res:
            detection[name] = res["detection"]
        defense_info[name] = {k: v for k, v in res.items() if k not in ("evaluation",)}
    rows = attack_table(evaluations, detection)
    md = write_tables(rows, run_dir.path)
    run_dir.write_summary(
        {
            "poisoned_set": pset.summary(),
            "victim": vinfo,
            "evaluations": evaluations,
            "detection": detection,
            "defenses": defense_info,
        }
    )
    return md
