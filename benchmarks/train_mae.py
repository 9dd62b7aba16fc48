"""Train detox's small MAE on a dataset's training split: the command that produced the
shipped ``src/detox/weights/mae-<dataset>-32`` folders (see ``src/detox/weights/mae-README.md``).

Usage (what produced ``mae-cifar10-32``, on the 2-core development CPU, one thread)::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/train_mae.py \
        --dataset cifar10 --out src/detox/weights/mae-cifar10-32 --minutes 11 --seed 0

``--minutes`` sizes the run (and its cosine schedule) to a wall-clock budget from the speed
of the first steps; ``--steps`` fixes the number of steps instead. The run checkpoints into
``OUT/checkpoint/`` and resumes from it when started again with the same arguments.
Random horizontal flips are used except for GTSRB (traffic signs are not mirror-symmetric).
"""

from __future__ import annotations

import argparse
import json
import os

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--out", required=True, help="output folder (model.safetensors + config.json)")
    ap.add_argument("--steps", type=int, default=None, help="total steps (default: the preset's)")
    ap.add_argument("--minutes", type=float, default=0.0, help="wall-clock budget (0: use --steps)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subset", type=int, default=0, help="seeded subset of the split (0: all)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="model settings (MAEConfig)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from detox.config import make_config
    from detox.data.registry import dataset_facts
    from detox.mae import MAEConfig, MAETrainConfig, train_mae

    facts = dataset_facts(args.dataset)
    name = facts.name if facts is not None else args.dataset
    cfg = make_config(
        MAETrainConfig,
        dataset=name,
        steps=args.steps,
        minutes=args.minutes,
        seed=args.seed,
        subset=args.subset,
        batch_size=args.batch_size,
        flip=name != "gtsrb",
    )
    model_cfg = None
    if args.set or facts is not None:
        over = dict(kv.split("=", 1) for kv in args.set)
        if facts is not None:
            over.setdefault("mean", tuple(facts.mean))
            over.setdefault("std", tuple(facts.std))
            over.setdefault("image_size", facts.image_size)
        model_cfg = make_config(MAEConfig, **over)
    _, record = train_mae(cfg, model_cfg, out=args.out, device=args.device)
    summary = {k: record[k] for k in ("steps", "final_loss", "wall_time_s", "device", "parameters")}
    summary["size_bytes"] = os.path.getsize(os.path.join(args.out, "model.safetensors"))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
