"""The detection tables of docs/results.md, from the cells of a `detox bench` run.

One row per (attack, detector variant): detection AUROC, TPR and FPR at the method's cut,
CA and ASR of the victim and of the model retrained on the kept examples, PA after
retraining, scoring and retraining seconds; optionally the AUROC of each part of the score
(UltraClean: median and NLM distances) and the removal in the smallest classes.

    python benchmarks/detection_table.py benchmarks/results/defenses_quick
    python benchmarks/detection_table.py benchmarks/results/badloss_quick --dataset gtsrb \
        --smallest 5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from detox.bench.report import smallest_class_removal
from detox.bench.tables import column_label


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def load_cells(out: Path) -> list[dict[str, Any]]:
    cells = sorted((out / "cells").glob("*.json"))
    if not cells:
        raise SystemExit(f"{out}: no finished cells (expected {out}/cells/*.json)")
    return [json.loads(p.read_text()) for p in cells]


def rows(results: list[dict[str, Any]], dataset: str | None, parts: bool) -> list[str]:
    victims = {r["group"]: r for r in results if r["defense"] == "none"}
    out = []
    # single attacks first, then multi-attack sets; the plain defense before its variants
    results = sorted(
        results,
        key=lambda r: (len(r.get("attack_names") or []) > 1, r["attack"], r["defense"] != "none"),
    )
    for r in results:
        if r.get("kind") != "detector" or (dataset and r["dataset"] != dataset):
            continue
        v = victims.get(r["group"])
        info = r.get("defense_info", {})
        retrain_s = (info.get("retrain") or {}).get("train_seconds")
        for name in r["attack_names"]:
            d = r["detection"]["per_attack"][name]
            ev = r.get("evaluation") or {"ca": None, "attacks": {}}  # None: detect_only
            att = ev["attacks"].get(name, {"asr": None, "pa": None})
            vatt = (v or {}).get("evaluation", {})
            label = name if len(r["attack_names"]) == 1 else f"{r['attack']}: {name}"
            cells = [
                label,
                column_label(r),
                f"{d['auroc']:.4f}",
                f"{d['tpr']:.4f}",
                f"{d['fpr']:.4f}",
                f"{_pct(vatt.get('ca'))} -> {_pct(ev['ca'])}",
                f"{_pct(vatt.get('attacks', {}).get(name, {}).get('asr'))} -> {_pct(att['asr'])}",
                _pct(att["pa"]),
                f"{info.get('score_seconds', 0):.0f}",
                "-" if retrain_s is None else f"{retrain_s:.0f}",
            ]
            if parts:
                pa = (r["detection"].get("part_auroc") or {}).get(name, {})
                cells.append(", ".join(f"{k} {x:.3f}" for k, x in pa.items()) or "-")
            out.append("| " + " | ".join(cells) + " |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="a `detox bench` output folder")
    ap.add_argument("--dataset", default=None, help="only this dataset's cells")
    ap.add_argument("--parts", action="store_true", help="add the AUROC of each score part")
    ap.add_argument(
        "--smallest", type=int, default=0, help="also print removal in the N smallest classes"
    )
    args = ap.parse_args(argv)
    results = load_cells(args.out)
    head = [
        "attack",
        "detector",
        "AUROC",
        "TPR",
        "FPR",
        "CA: victim -> retrained",
        "ASR: victim -> retrained",
        "PA retrained",
        "scoring s",
        "retraining s",
    ] + (["part AUROC"] if args.parts else [])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    print("\n".join(rows(results, args.dataset, args.parts)))
    if args.smallest:
        for r in results:
            if r.get("kind") != "detector" or (args.dataset and r["dataset"] != args.dataset):
                continue
            small = smallest_class_removal(r["detection"], args.smallest)
            overall = r["detection"]["overall"]
            print(
                f"\n{r['dataset']} {r['attack']} {column_label(r)}: removal in the "
                f"{len(small)} smallest classes (overall {100 * overall['removed'] / overall['n']:.1f}%)\n"
            )
            print("| class | examples | removed % |\n|---|---|---|")
            for s in small:
                print(f"| {s['class']} | {s['examples']} | {s['removed %']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
