"""Images per second of every purifier at a preset, on the same clean CIFAR-10 test images
and the same victim (the model-aware purifiers query it), on this machine.

    python benchmarks/purifier_speed.py --victim-key KEY --n 64 --preset quick \
        --out benchmarks/results/purifier_speed_cpu.json

``--victim-key``: a victim in the cache (`detox cache list --kind victims`), e.g. the
BadNets victim of benchmarks/configs/purifiers-quick.toml; without it a small CNN is
trained for a few seconds (the throughput of the model-aware purifiers then understates
their cost with a larger victim). Each purifier runs once untimed on 4 images (loading
weights), then on ``--n`` images, timed. No purified-image cache.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from detox.data import load_dataset
from detox.defenses.context import DefenseContext
from detox.defenses.purifiers import PURIFIERS, build_purifier
from detox.utils.fingerprint import state_fingerprint
from detox.utils.io import atomic_write_json


def victim(key: str | None):
    if key:
        from detox.cache import Store
        from detox.models.base import load_checkpoint

        entry = Store("victims").get(key)
        if entry is None:
            raise SystemExit(f"no victim {key!r} in the cache (detox cache list --kind victims)")
        return load_checkpoint(entry.path).eval()
    from detox.config import make_config
    from detox.models import build_model
    from detox.training import TrainConfig, train

    tr = load_dataset("cifar10", "train")
    cfg = make_config(TrainConfig, "smoke", epochs=1, progress=False)
    model = build_model(cfg.model, 10, width=cfg.width, dataset="cifar10", seed=0)
    return train(model, tr.x[:1000], tr.y[:1000], cfg, device="cpu").model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--victim-key", default=None)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--only", default=None, help="comma-separated purifier names")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    x = load_dataset("cifar10", "test").x[: args.n].float() / 255
    model = victim(args.victim_key)
    ctx = DefenseContext(model=model, model_fingerprint=state_fingerprint(model), seed=0)
    names = args.only.split(",") if args.only else PURIFIERS.names()
    rows = []
    for name in names:
        p = build_purifier(name, args.preset).use_dataset_defaults("cifar10")
        p.prepare(ctx).to("cpu")
        with torch.inference_mode():
            p.purify(x[:4], seed=0)
            t = time.perf_counter()
            p.purify(x, seed=0)
            s = time.perf_counter() - t
        rows.append({"purifier": name, "preset": args.preset, "images": args.n,
                     "seconds": round(s, 2), "images_per_second": round(args.n / s, 2)})  # fmt: skip
        print(f"{name:<10} {args.n / s:8.2f} img/s ({s:.1f} s)", flush=True)
    atomic_write_json(args.out, {
        "rows": rows, "threads": torch.get_num_threads(), "machine": platform.processor()
        or platform.machine(), "victim_key": args.victim_key, "torch": torch.__version__,
    })  # fmt: skip


if __name__ == "__main__":
    main()
