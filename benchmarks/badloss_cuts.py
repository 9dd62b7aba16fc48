"""BaDLoss's cuts compared on one set of scores: the fixed 40% against the adaptive
probe-quantile cut (reject what scores above the q-quantile of the probes' own scores).

Reads a BaDLoss cell of a `detox bench` run (``cells/<id>/badloss_scores.csv`` and
``cells/<id>.json``) and applies each cut with :meth:`detox.defenses.detectors.badloss.BaDLoss.cut`
to the same scores: the detection side only (removed fraction, TPR per attack, FPR on clean
examples, removal in the smallest classes); what each cut does to ASR after retraining
needs a bench cell with ``cut = "probe-quantile"``.

    python benchmarks/badloss_cuts.py \
        benchmarks/results/badloss_quick/cells/cifar10__badloss-cifar10__quick__s0__badloss
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from detox.defenses.detectors import build_detector


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cell", type=Path, help="a BaDLoss cell folder (holds badloss_scores.csv)")
    ap.add_argument("--quantiles", type=float, nargs="+", default=[0.9, 0.95, 0.99])
    ap.add_argument("--smallest", type=int, default=5, help="smallest classes reported")
    args = ap.parse_args(argv)
    path = args.cell / "badloss_scores.csv"
    meta = args.cell.with_suffix(".json")
    if not path.is_file() or not meta.is_file():
        raise SystemExit(f"{args.cell}: expected badloss_scores.csv inside and {meta.name} beside")
    rows = list(csv.DictReader(path.open()))
    s = np.array([float(r["score"]) for r in rows])
    probe = np.array([r["probe"] == "1" for r in rows])
    aid = np.array([int(r["attack_id"]) for r in rows])
    y = np.array([int(r["true_label"]) for r in rows])
    names = json.loads(meta.read_text())["attack_names"]
    counts = np.bincount(y, minlength=y.max() + 1)
    small = np.argsort(counts, kind="stable")[: args.smallest]
    cuts = [("fraction 0.4 (paper)", {"cut": "fraction"})] + [
        (f"probe-quantile {q}", {"cut": "probe-quantile", "probe_quantile": q})
        for q in args.quantiles
    ]
    head = ["cut", "removed % (non-probes)", *[f"TPR {n}" for n in names], "FPR clean"]
    head += [f"class {c} ({counts[c]})" for c in small]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    clean = (aid < 0) & ~probe
    for label, settings in cuts:
        removed = build_detector("badloss", **settings).cut(s, probe)
        cells = [label, f"{100 * removed[~probe].mean():.1f}"]
        cells += [f"{removed[aid == i].mean():.3f}" for i in range(len(names))]
        cells.append(f"{removed[clean].mean():.3f}")
        cells += [f"{100 * removed[(y == c) & ~probe].mean():.1f}%" for c in small]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
