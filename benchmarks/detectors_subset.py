"""Detection AUROC of model-based detectors on a seeded subset of a poisoned training set.

Loads (or trains, through the victim cache) the victim of a bench group, draws ``--poisons``
poisoned and ``--clean`` clean training examples (seeded) and ``--probes`` other clean ones
as the trusted set, and scores the subset with each detector that scores examples with the
victim alone (no retraining: Spectral Signatures, Activation Clustering, STRIP, PSBD,
Cognitive Distillation, SCAn). A quick way to see whether a detector works on a victim before a
full cleanse-and-retrain bench.

    DETOX_DATA_DIR=../shared/data python benchmarks/detectors_subset.py --attack badnets \
        --set train_subset=30000 --set width=0.5 --set epochs=6 --set test_subset=100 \
        --out benchmarks/results/demo_airnet/detectors_subset_badnets.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from detox.config import parse_overrides
from detox.defenses.detectors import DetectorContext, build_detector
from detox.metrics import detection_metrics
from detox.pipeline import make_poisoned_set, resolve_configs, train_victim

DETECTORS = ("spectral", "activation-clustering", "strip", "psbd", "cognitive-distillation", "scan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--attack", default="badnets")
    ap.add_argument("--preset", default="quick", help="training preset of the victim")
    ap.add_argument("--defense-preset", default="quick")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--detectors", default=",".join(DETECTORS))
    ap.add_argument("--poisons", type=int, default=100)
    ap.add_argument("--clean", type=int, default=400)
    ap.add_argument("--probes", type=int, default=500)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    over = parse_overrides(args.set)
    dcfg, tcfg, ecfg = resolve_configs(args.preset, "cifar10", args.seed, over)
    pset = make_poisoned_set(dcfg, args.attack, args.seed, None, "cpu", ecfg.test_limit)
    victim, info = train_victim(pset, tcfg, "cpu", cache=True)
    poison = pset.is_poisoned.numpy()
    rng = np.random.default_rng(args.seed)
    clean = rng.permutation(np.flatnonzero(~poison))
    idx = np.concatenate(
        [rng.choice(np.flatnonzero(poison), args.poisons, replace=False), clean[: args.clean]]
    )
    probes = clean[args.clean : args.clean + args.probes]
    data = pset.as_dataset()
    sub = data.subset(torch.from_numpy(idx))
    trusted = data.subset(torch.from_numpy(probes))
    truth = poison[idx]
    res: dict = {"attack": args.attack, "overrides": over, "victim": info.get("key"),
                 "n_poisons": args.poisons, "n_clean": args.clean, "n_probes": args.probes,
                 "detectors": {}}  # fmt: skip
    for name in args.detectors.split(","):
        det = build_detector(name, args.defense_preset)
        ctx = DetectorContext(model=victim, labels=sub.y.numpy(), seed=args.seed, progress=False,
                              trusted=trusted if det.needs_probes else None)  # fmt: skip
        t = time.time()
        s = det.score(sub, ctx)
        res["detectors"][name] = {
            "auroc": detection_metrics(s, truth)["auroc"],
            "seconds": time.time() - t,
        }
        print(name, res["detectors"][name], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
