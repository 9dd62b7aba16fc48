"""``detox purify``: purify images with a test-time defense and write them out.

    detox purify --input cifar10 --defense sampdetox --diffusion weights/cifar10 --out runs/p
    detox purify --input runs/poisoned --defense sampdetox --limit 300 --out runs/p
    detox purify --input runs/poisoned --defense NAME --model runs/victim --out runs/p

``--input`` is a dataset name or path (its test split is purified) or a PoisonedSet
artefact (its clean test set and every triggered test set are purified). Writes the
purified images as a PoisonedSet-style artefact (``.npy`` + manifest), a PNG preview,
``config.json`` and ``summary.json``. A model-aware purifier (one that ``needs_model``:
it queries the classifier it protects) needs ``--model``, the classifier's checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from detox.cli import COMMANDS, add_common, positive_int


@COMMANDS.register("purify")
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("purify", help="purify inputs with a test-time defense")
    p.add_argument("--input", required=True, help="dataset name/path or PoisonedSet folder")
    p.add_argument("--defense", default="sampdetox", help="purifier name")
    p.add_argument("--diffusion", default=None, help="diffusion model folder or hub id")
    p.add_argument(
        "--model",
        default=None,
        help="the protected classifier's checkpoint (model-aware purifiers)",
    )
    p.add_argument(
        "--limit", type=positive_int, default=None, help="purify at most this many per set"
    )
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--defense-preset", default=None, help="purifier preset (default: paper)")
    add_common(p, preset=False, out=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    from detox.data import PoisonedSet, load_dataset
    from detox.defenses.purifiers import build_purifier
    from detox.runs import check_output, output_folder
    from detox.utils.device import resolve_device

    device = resolve_device(args.device)
    check_output(args.out, [args.input, args.diffusion, args.model], args.force)
    over = {"diffusion": args.diffusion} if args.diffusion else {}
    pur = build_purifier(args.defense, args.defense_preset, **over)
    if (Path(args.input) / "manifest.json").is_file():
        pset = PoisonedSet.load(args.input)
        if pset.test is None:
            from detox.errors import ConfigError

            raise ConfigError(f"{args.input}: the artefact carries no test set to purify")
    else:
        test = load_dataset(args.input, "test", data_dir=args.data_dir)
        pset = PoisonedSet.from_clean(test, seed=args.seed, test=test)
    dataset = pset.source.get("dataset") or pset.source.get("name")
    pur.use_dataset_defaults(dataset)
    pur.prepare(_context(args, pur, device, dataset))
    lim = slice(0, args.limit)
    with output_folder(args.out, [args.input, args.diffusion, args.model], args.force) as run_dir:
        n_clean, n_trig = _purify(args, pur, pset, lim, device, run_dir)
    print(f"purified {n_clean} clean and {n_trig} triggered images -> {run_dir.path}")
    return 0


def _context(args, pur, device, dataset):
    """The purifier's :class:`~detox.defenses.context.DefenseContext`: the classifier of
    ``--model`` for a purifier that needs it (refused for one that does not)."""
    from detox.defenses.context import DefenseContext
    from detox.errors import ConfigError

    ctx = DefenseContext(device=device, seed=args.seed, dataset=dataset, progress=not args.quiet)
    if pur.needs_model:
        if not args.model:
            raise ConfigError(
                f"--defense {args.defense}: this purifier queries the classifier it protects; "
                "pass --model CHECKPOINT"
            )
        from detox.models import load_checkpoint
        from detox.utils.fingerprint import state_fingerprint

        ctx.model = load_checkpoint(args.model, device).eval()
        ctx.model_fingerprint = state_fingerprint(ctx.model)
    elif args.model:
        raise ConfigError(f"--model: {args.defense} does not use the classifier; drop --model")
    return ctx


def _purify(args, pur, pset, lim, device, run_dir) -> tuple[int, int]:
    import torch

    from detox.config import asdict
    from detox.data import ImageDataset, PoisonedSet, TriggeredSet
    from detox.defenses.purifiers import purify_all

    run_dir.write_config(
        "purify",
        {"input": str(args.input), "defense": args.defense, "purifier": asdict(pur.config),
         "device": str(device), "seed": args.seed, "limit": args.limit},
    )  # fmt: skip

    def clean(x: torch.Tensor, desc: str) -> torch.Tensor:
        return purify_all(pur, x, args.batch_size, device, not args.quiet, args.seed, desc)

    test = pset.test
    px = clean(test.x[lim], "purify clean test")
    out_test = ImageDataset(px, test.y[lim], list(pset.classes), "purified-test")
    triggered = {}
    for name, t in pset.triggered.items():
        triggered[name] = TriggeredSet(
            clean(t.x[lim], f"purify {name}"), t.y_true[lim], t.y_target[lim], t.index[lim]
        )
    out = PoisonedSet(
        px, test.y[lim], test.y[lim], torch.full((len(px),), -1), list(pset.classes),
        [dict(a) for a in pset.attacks], pset.seed,
        {**pset.source, "purified_by": args.defense}, out_test, triggered,
    )  # fmt: skip
    out.save(run_dir / "purified")
    from detox.plots.purification import purification_grid

    purification_grid(test.x[lim][:8], px[:8], run_dir / "preview.png")
    run_dir.write_summary(
        {"n_clean": len(px), "n_triggered": {k: len(v) for k, v in triggered.items()},
         "warnings": list(getattr(pur, "warnings", []))}
    )  # fmt: skip
    return len(px), sum(len(v) for v in triggered.values())
