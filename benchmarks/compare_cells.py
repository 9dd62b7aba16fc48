"""Compare the cell figures of two ``detox bench`` runs of the same grid.

    python benchmarks/compare_cells.py /tmp/smoke-before /tmp/smoke-after

Compares every number of each cell's ``evaluation`` and ``detection`` (CA, PA, ASR,
TPR/FPR/AUROC...) and the victim's key; prints each difference and exits 1 if there is
one, or if a cell is missing from either run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def numbers(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from numbers(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from numbers(v, f"{prefix}[{i}]")
    elif isinstance(obj, (int, float, str, bool)) or obj is None:
        yield prefix, obj


def figures(cell: dict) -> dict:
    keep = {k: cell.get(k) for k in ("evaluation", "detection")}
    return dict(numbers(keep))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before")
    ap.add_argument("after")
    args = ap.parse_args()
    a = {p.name: p for p in Path(args.before, "cells").glob("*.json")}
    b = {p.name: p for p in Path(args.after, "cells").glob("*.json")}
    bad = 0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            print(f"{name}: only in {'after' if name in b else 'before'}")
            bad += 1
            continue
        fa, fb = (figures(json.loads(p.read_text())) for p in (a[name], b[name]))
        for k in sorted(set(fa) | set(fb)):
            if fa.get(k) != fb.get(k):
                print(f"{name}: {k}: {fa.get(k)!r} -> {fb.get(k)!r}")
                bad += 1
    print(f"{len(set(a) & set(b))} cells compared, {bad} differences")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
