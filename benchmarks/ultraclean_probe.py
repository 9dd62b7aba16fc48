"""Why UltraClean does or does not separate an attack's poisons with a given victim.

Loads (or trains, through the victim cache) the victim of a bench group, then measures:

* UltraClean's AUROC with the logit score (the authors' PyTorch scripts) and the softmax
  score (their TensorFlow scripts), and each denoiser's part;
* how the victim reacts to the 2x2x3 median filter (UltraClean's first denoiser, scipy as
  in the authors' code): on poisoned training images, the fraction still classified as
  their (poisoned) label, i.e. the trigger survives; on clean ones, the fraction whose
  prediction changes.

    DETOX_DATA_DIR=../shared/data python benchmarks/ultraclean_probe.py --attack badnets \
        --set train_subset=30000 --set width=0.5 --set epochs=6 --set test_subset=100

(the demo's scale; the victim comes from the cache when `detox demo` trained it).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from scipy.ndimage import median_filter
from sklearn.metrics import roc_auc_score

from detox.config import parse_overrides
from detox.defenses.detectors import build_detector
from detox.defenses.detectors.base import DetectorContext
from detox.pipeline import make_poisoned_set, resolve_configs, train_victim


def median_2x2x3(x: torch.Tensor) -> torch.Tensor:
    """scipy's median over 2x2 pixels and the 3 channels (uint8 NCHW in and out)."""
    h = x.permute(0, 2, 3, 1).numpy()
    out = np.stack([median_filter(i, size=(2, 2, 3), mode="reflect") for i in h])
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--attack", default="badnets")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--n", type=int, default=1000, help="images per group for the median probe")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    over = parse_overrides(args.set)
    dcfg, tcfg, ecfg = resolve_configs(args.preset, "cifar10", args.seed, over)
    pset = make_poisoned_set(dcfg, args.attack, args.seed, None, "cpu", ecfg.test_limit)
    victim, info = train_victim(pset, tcfg, "cpu", cache=True)
    victim.eval()
    ds = pset.as_dataset()
    y = pset.is_poisoned.numpy().astype(int)
    res: dict = {"attack": args.attack, "overrides": over, "victim": info.get("key")}
    for name, kw in (("logits", {}), ("softmax", {"score_space": "softmax"})):
        ctx = DetectorContext(model=victim, progress=False)
        t = time.time()
        s = build_detector("ultraclean", **kw).score(ds, ctx)
        parts = ctx.artifacts.get("score_parts") or {}
        res[name] = {
            "auroc": roc_auc_score(y, s),
            "part_auroc": {k: roc_auc_score(y, v) for k, v in parts.items()},
            "seconds": time.time() - t,
        }
        print(name, res[name], flush=True)

    def pred(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([victim(b.float() / 255).argmax(1) for b in x.split(500)])

    g = torch.Generator().manual_seed(args.seed)
    for group, mask in (("poisoned", pset.is_poisoned), ("clean", ~pset.is_poisoned)):
        idx = torch.nonzero(mask).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)[: args.n]]
        x, lab = ds.x[idx], ds.y[idx]
        p0, p1 = pred(x), pred(median_2x2x3(x))
        res[f"median_{group}"] = {
            "n": len(idx),
            "agrees_with_label": float((p0 == lab).float().mean()),
            "agrees_after_median": float((p1 == lab).float().mean()),
            "prediction_changed": float((p0 != p1).float().mean()),
        }
        print(group, res[f"median_{group}"], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
