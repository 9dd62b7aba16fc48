"""``detox train`` (train a classifier) and ``detox eval`` (evaluate a checkpoint)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from detox.cli import COMMANDS, add_common, add_force, positive_int

NO_TEST_SPLIT = (
    "warning: {data} has no test split (no x_test/y_test keys, no train/ and test/ "
    "folders): the accuracy is measured on the training images, not held-out ones"
)


@COMMANDS.register("train")
def register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a classifier on a dataset (under torchrun: data-parallel, see "
        "detox.distributed)",
    )
    p.add_argument("--dataset", default="cifar10", help="registered name or a path")
    p.add_argument("--model", default=None, help="model name (default: the preset's)")
    p.add_argument(
        "--epochs", type=positive_int, default=None, help="epochs (default: the preset's)"
    )
    p.add_argument("--eval-every-epoch", action="store_true", help="log test accuracy per epoch")
    add_common(p, out=True)
    p.set_defaults(func=run_train)


@COMMANDS.register("eval")
def register_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="clean accuracy of a checkpoint on a dataset's test split")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (model.safetensors)")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument(
        "--out", default=None, help="output folder (default: <checkpoint>/eval-<dataset>)"
    )
    p.add_argument("--batch-size", type=positive_int, default=1024)
    add_common(p, preset=False)
    add_force(p)
    p.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    from detox.config import DataConfig, make_config, parse_overrides, split_overrides
    from detox.data import load_splits
    from detox.runs import check_output, output_folder
    from detox.training import TrainConfig
    from detox.utils.device import resolve_device

    over = parse_overrides(args.overrides)
    dcfg = make_config(
        DataConfig,
        args.preset,
        dataset=args.dataset,
        seed=args.seed,
        **split_overrides(DataConfig, over),
    )
    tover = split_overrides(TrainConfig, over)
    unknown = set(over) - set(tover) - set(split_overrides(DataConfig, over))
    if unknown:
        from detox.errors import ConfigError

        raise ConfigError(f"--set: unknown setting(s) {', '.join(sorted(unknown))}")
    explicit = {"model": args.model, "epochs": args.epochs, "seed": args.seed}
    tcfg = make_config(
        TrainConfig,
        args.preset,
        **{**{k: v for k, v in explicit.items() if v is not None}, **tover},
        progress=not args.quiet,
    )
    from detox.distributed import ddp_session

    device = resolve_device(args.device)
    check_output(args.out, [args.dataset], args.force)
    train_ds, test_ds = load_splits(dcfg, args.data_dir)
    with ddp_session(device) as ddp:
        main = ddp is None or ddp.is_main
        if ddp is not None:
            device = ddp.device
        folder = (
            output_folder(args.out, [args.dataset], args.force)
            if main
            else contextlib.nullcontext(None)
        )
        with folder as run:
            acc, res = _train(args, dcfg, tcfg, train_ds, test_ds, device, ddp, run)
        if run is None:
            return 0
    if test_ds.meta.get("separate_test_split", True):
        print(f"test accuracy {acc:.4f} after {res.seconds:.0f}s of training -> {Path(args.out)}")
    else:
        print(NO_TEST_SPLIT.format(data=args.dataset), file=sys.stderr)
        print(f"accuracy on the training images {acc:.4f} -> {Path(args.out)}")
    return 0


def _train(args, dcfg, tcfg, train_ds, test_ds, device, ddp, run):
    """Train (every rank); on the main rank (``run`` set) evaluate and write the run."""
    from detox.config import asdict
    from detox.distributed import unwrap
    from detox.models import build_model, save_checkpoint
    from detox.training import accuracy, train

    if run is not None:
        run.write_config(
            "train",
            {
                "preset": args.preset,
                "device": str(device),
                "data": asdict(dcfg),
                "train": asdict(tcfg),
                "data_source": {"train": train_ds.meta, "test": test_ds.meta},
                "distributed": None if ddp is None else {"world_size": ddp.world},
            },
        )
    model = build_model(
        tcfg.model,
        train_ds.num_classes,
        width=tcfg.width,
        in_channels=train_ds.x.shape[1],
        dataset=train_ds.meta.get("dataset", dcfg.dataset),
        seed=tcfg.seed,
    )
    x, y, cfg = train_ds.x, train_ds.y, tcfg
    if ddp is not None:
        x, y = ddp.shard(x, y, tcfg.seed)
        cfg = ddp.batch_config(tcfg)
        model = ddp.wrap(model, cfg.channels_last)
    res = train(
        model,
        x,
        y,
        cfg,
        device=device,
        eval_data=(test_ds.x, test_ds.y) if args.eval_every_epoch and run is not None else None,
        desc=f"train {tcfg.model}",
    )
    if run is None:
        return None, res
    model = unwrap(res.model)
    acc = accuracy(model, test_ds.x, test_ds.y, tcfg.eval_batch_size)
    save_checkpoint(model, run.path, extra={"classes": train_ds.classes, "train": asdict(tcfg)})
    held_out = test_ds.meta.get("separate_test_split", True)
    summary = {
        # a dataset without a test split serves its training images as "test": say so
        ("test_accuracy" if held_out else "accuracy_on_training_images"): acc,
        "train_seconds": round(res.seconds, 2),
        "train_images_per_second": round(res.images_per_second * (ddp.world if ddp else 1), 1),
        "n_train": len(train_ds),
        "n_train_used": len(x) * (ddp.world if ddp else 1),
        "n_test": len(test_ds),
        "world_size": ddp.world if ddp else 1,
        "history": res.history,
    }
    if not held_out:
        summary["warning"] = NO_TEST_SPLIT.format(data=args.dataset)
    run.write_summary(summary)
    return acc, res


def run_eval(args: argparse.Namespace) -> int:
    from detox.data import load_dataset
    from detox.models import load_checkpoint
    from detox.runs import check_output, output_folder
    from detox.utils.device import resolve_device

    device = resolve_device(args.device)
    out = Path(args.out) if args.out else Path(args.checkpoint) / f"eval-{Path(args.dataset).name}"
    check_output(out, [args.checkpoint, args.dataset], args.force)
    model = load_checkpoint(args.checkpoint, device)
    test = load_dataset(args.dataset, "test", data_dir=args.data_dir)
    if test.num_classes != model.meta["num_classes"]:
        from detox.errors import ConfigError

        raise ConfigError(
            f"--dataset {args.dataset} has {test.num_classes} classes but the checkpoint "
            f"predicts {model.meta['num_classes']}"
        )
    with output_folder(out, [args.checkpoint, args.dataset], args.force) as run:
        acc = _eval(args, model, test, device, run)
    print(f"clean accuracy {acc:.4f} on {len(test)} test images -> {out}")
    return 0


def _eval(args, model, test, device, run) -> float:
    from detox.metrics import clean_accuracy
    from detox.training import predict

    run.write_config(
        "eval",
        {
            "checkpoint": str(args.checkpoint),
            "dataset": args.dataset,
            "device": str(device),
            "model": model.meta,
            "data_source": test.meta,
        },
    )
    pred = predict(model, test.x, args.batch_size)
    acc = clean_accuracy(pred, test.y)
    per_class = [float((pred[test.y == c] == c).float().mean()) for c in range(test.num_classes)]
    summary = {"clean_accuracy": acc, "n_test": len(test), "per_class_accuracy": per_class}
    if not test.meta.get("separate_test_split", True):
        summary["warning"] = NO_TEST_SPLIT.format(data=args.dataset)
        print(summary["warning"], file=sys.stderr)
    run.write_summary(summary)
    return acc
