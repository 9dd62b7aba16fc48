"""Print the SampDetox table that ``train_and_check.py --eval`` measured on the device.

    python benchmarks/gpu/eval_table.py benchmarks/results/gpu_h200_eval/eval.json
    python benchmarks/gpu/eval_table.py benchmarks/results/gpu_h200_eval/eval.json \
        benchmarks/results/gpu_h200_call3/eval.json --only 'code s=1' 'paper s=1'

With several files, each model is named by its file's folder (``gpu_h200_eval:trained``);
``--only`` keeps the settings named.

One row per attack, one column per (model, setting): CA / PA / ASR in %, and the CA cost
against the undefended victim for the code setting; then images per second per setting.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("eval_json", nargs="+")
    ap.add_argument("--only", nargs="*", default=None, help="settings to show")
    args = ap.parse_args()
    rows, devices = [], set()
    for f in args.eval_json:
        d = json.loads(Path(f).read_text())
        devices.add(f"{d['device']}, torch {d['torch']}")
        for r in d["rows"]:
            if "attack" not in r:
                continue
            if len(args.eval_json) > 1:
                r = {**r, "model": f"{Path(f).parent.name}:{r['model']}"}
            if args.only is None or r["setting"] in ("none", *args.only):
                rows.append(r)
    none: dict = {}
    for r in rows:  # the victims are the same in every file: the first record serves
        if r["setting"] == "none":
            none.setdefault(r["attack"], r)
    cols: list[tuple[str, str]] = []
    cell: dict = defaultdict(dict)
    speed: dict = {}
    for r in rows:
        if r["setting"] == "none":
            continue
        key = (r["model"], r["setting"])
        if key not in cols:
            cols.append(key)
        cell[r["attack"]][key] = r
        speed[key] = (r["img_per_s"], r["evals_per_image"])
    print(f"device: {'; '.join(sorted(devices))}\n")
    head = ["attack", "no defense"] + [f"{m}: {s}" for m, s in cols]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))

    def fmt(r):
        return f"{100 * r['ca']:.2f} / {100 * r['pa']:.2f} / {100 * r['asr']:.2f}"

    for a in sorted(cell, key=lambda a: list(none).index(a)):
        print(f"| {a} | {fmt(none[a])} | " + " | ".join(fmt(cell[a][k]) for k in cols) + " |")
    print("\nCA cost (points) against the undefended victim:\n")
    print("| attack | " + " | ".join(f"{m}: {s}" for m, s in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for a in cell:
        cost = [100 * (none[a]["ca"] - cell[a][k]["ca"]) for k in cols]
        print(f"| {a} | " + " | ".join(f"{c:.1f}" for c in cost) + " |")
    print("\nimages per second (bf16 autocast, sets of 340 and 306 images):\n")
    for k, (ips, ev) in speed.items():
        print(f"- {k[0]}, {k[1]}: {ips:.0f} img/s ({ev} network evaluations per image)")


if __name__ == "__main__":
    main()
