"""``detox scan``: score every training example with a detector and write the kept set.

    detox scan --data runs/poisoned --defense ultraclean --model runs/victim --out runs/scan
    detox scan --data cifar10 --defense badloss --trusted probes.txt --out runs/scan

``--data`` is a PoisonedSet artefact (from ``detox poison``; detection metrics are computed
from its ground truth) or any dataset name / path (no ground truth). Without ``--model``,
a detector that needs one trains it on the data first (the preset's training config).
Writes ``scores.csv`` (index, score, kept, ...), the kept-set artefact under ``kept/``,
``summary.json`` and, where ground truth exists, the score histogram and ROC.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from detox.cli import COMMANDS, add_common


@COMMANDS.register("scan")
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scan", help="score training examples with a detector; write the kept set")
    p.add_argument("--data", required=True, help="PoisonedSet folder, dataset name or path")
    p.add_argument("--defense", required=True, help="detector name (ultraclean, badloss, ...)")
    p.add_argument("--model", default=None, help="checkpoint trained on the data (optional)")
    p.add_argument(
        "--trusted",
        default=None,
        help="trusted clean examples: a text file of indices, or a comma list (a seeded sample of n_probes is drawn from them)",
    )
    p.add_argument("--defense-preset", default=None, help="preset of the detector's settings")
    add_common(p, out=True)
    p.set_defaults(func=run)


def read_indices(value: str, n: int) -> np.ndarray:
    """Indices from a file (whitespace/comma separated) or an inline comma list."""
    from detox.errors import ConfigError

    text = Path(value).read_text() if Path(value).is_file() else value
    try:
        idx = np.array([int(t) for t in text.replace(",", " ").split()], dtype=np.int64)
    except ValueError as e:
        raise ConfigError(f"--trusted {value!r}: expected integer indices") from e
    if len(idx) == 0 or idx.min() < 0 or idx.max() >= n:
        raise ConfigError(f"--trusted: indices must lie in [0, {n}) and not be empty")
    return np.unique(idx)


def run(args: argparse.Namespace) -> int:

    from detox.config import parse_overrides
    from detox.data import PoisonedSet, load_dataset
    from detox.defenses.detectors import build_detector
    from detox.errors import ConfigError
    from detox.pipeline import choose_probes, resolve_configs
    from detox.runs import check_output, output_folder
    from detox.utils.device import resolve_device

    device = resolve_device(args.device)
    inputs = [args.data, args.model, args.trusted]
    check_output(args.out, inputs, args.force)
    if (Path(args.data) / "manifest.json").is_file():
        pset = PoisonedSet.load(args.data)
    else:
        pset = PoisonedSet.from_clean(load_dataset(args.data, "train", data_dir=args.data_dir))
    dataset = pset.source.get("dataset") or pset.source.get("name")
    _, tcfg, ecfg = resolve_configs(
        args.preset, dataset or "cifar10", args.seed, parse_overrides(args.overrides)
    )
    tcfg.progress = not args.quiet
    det = build_detector(args.defense, args.defense_preset or args.preset)
    if args.trusted and not det.needs_probes:
        raise ConfigError(
            f"--trusted: {args.defense} takes no trusted examples (only detectors that use "
            "clean probes do, e.g. badloss); drop --trusted"
        )
    trusted = read_indices(args.trusted, len(pset)) if args.trusted else None
    probes = choose_probes(det, pset, args.seed, trusted)
    with output_folder(args.out, inputs, args.force) as run_dir:
        summary = _scan(args, det, pset, dataset, tcfg, ecfg, probes, device, run_dir)
    print(
        f"{args.defense}: removed {summary['n_removed']} of {summary['n']}"
        + (
            f", AUROC {summary['detection']['overall']['auroc']:.4f}, "
            f"TPR {summary['detection']['overall']['tpr']:.4f}"
            if "detection" in summary
            else ""
        )
        + f" -> {run_dir.path}"
    )
    return 0


def _scan(args, det, pset, dataset, tcfg, ecfg, probes, device, run_dir) -> dict:
    import torch

    from detox.config import asdict
    from detox.models import load_checkpoint
    from detox.pipeline import detect, train_classifier, write_detection

    run_dir.write_config(
        "scan",
        {
            "data": str(args.data),
            "defense": args.defense,
            "detector": asdict(det.config),
            "train": asdict(tcfg),
            "model": args.model,
            "device": str(device),
            "seed": args.seed,
            "probes": None if probes is None else probes.tolist(),
        },
    )
    model, model_info, model_config = None, None, None
    if det.needs_model:
        if args.model:
            model = load_checkpoint(args.model, device)
            model_info = {"checkpoint": str(args.model)}
        else:
            model, model_info = train_classifier(
                pset.x, pset.y, pset.classes, tcfg, device, dataset, ecfg.cache_victims
            )
            model_config = tcfg
    found = detect(pset, det, tcfg, device, model, probes, args.seed, not args.quiet, model_config)
    write_detection(run_dir.path, args.defense, det, pset, found, "scores.csv")
    pset.subset(torch.from_numpy(~found.removed)).save(run_dir / "kept")
    summary = {
        "n": len(pset),
        "n_removed": int(found.removed.sum()),
        "n_kept": found.n_kept,
        "model": model_info,
    }
    if found.report is not None:
        summary["detection"] = found.report
    run_dir.write_summary(summary)
    return summary
