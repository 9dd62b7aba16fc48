"""``detox data info DATASET``: counts, classes and checksum status of a dataset."""

from __future__ import annotations

import argparse
import json

from detox.cli import COMMANDS, add_common


@COMMANDS.register("data")
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect datasets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    info = dsub.add_parser("info", help="counts, classes and checksum status of a dataset")
    info.add_argument("dataset", help="registered name (cifar10, gtsrb, ...) or a path")
    info.add_argument("--json", action="store_true", help="print JSON")
    add_common(info, preset=False)
    info.set_defaults(func=run_info)
    lst = dsub.add_parser("list", help="registered dataset names")
    lst.set_defaults(func=run_list)


def run_info(args: argparse.Namespace) -> int:
    from detox.data.info import dataset_info, format_info

    info = dataset_info(args.dataset, data_dir=args.data_dir)
    print(json.dumps(info, indent=2, default=str) if args.json else format_info(info))
    return 0


def run_list(args: argparse.Namespace) -> int:
    from detox.data import DATASETS

    print("\n".join(DATASETS.names()))
    return 0
