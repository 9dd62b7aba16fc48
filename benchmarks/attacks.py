"""Train one victim per attack on CIFAR-10 and record CA, PA and ASR (and a clean model).

    python benchmarks/attacks.py --preset quick --out benchmarks/out/attacks
    python benchmarks/attacks.py --preset quick --attacks badnets,blended --out ...

Each attack is one cell: poison (10% by default, target 0; BaDLoss attacks at their own
ratios) -> train the victim with the preset's training config -> evaluate. A learned
attack's artefact (its settings picked by the preset) is built on first use or read from
the cache; the table's "artefact s" is its build time as recorded when it was built. Each cell's
result is written atomically as ``<out>/<cell>.json`` when it finishes and skipped when it
already exists, so an interrupted run resumes. ``--suite`` adds a multi-attack cell where
every attack's ASR comes from one victim. The table goes to ``<out>/attacks.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from detox.bench.tables import to_markdown
from detox.config import parse_overrides
from detox.pipeline import evaluate_backdoor, make_poisoned_set, resolve_configs, train_victim
from detox.runs import environment
from detox.utils.device import resolve_device
from detox.utils.io import atomic_write_json, atomic_write_text

DEFAULT = "clean,badnets,blended,sig,wanet,bpp,refool,frequency,patch,single-pixel,blend-random,blend-pattern,sinusoid"


def run_cell(cell, attacks, preset, seed, device, data_dir, overrides, progress):
    dcfg, tcfg, ecfg = resolve_configs(preset, "cifar10", seed, overrides)
    tcfg.progress = progress
    t0 = time.perf_counter()
    pset = make_poisoned_set(
        dcfg, attacks, seed, data_dir, device, ecfg.test_limit, scale=preset
    )  # the preset picks learned attacks' artefact settings, as `detox run` does
    victim, info = train_victim(pset, tcfg, device, ecfg.cache_victims)
    ev = evaluate_backdoor(victim, pset)
    return {
        "cell": cell,
        "attacks": pset.attacks,
        "summary": pset.summary(),
        "evaluation": ev,
        "victim": {k: v for k, v in info.items() if k != "history"},
        "seconds": round(time.perf_counter() - t0, 1),
        "preset": preset,
        "seed": seed,
        "train": {"model": tcfg.model, "width": tcfg.width, "epochs": tcfg.epochs},
    }


def artefact_seconds(record: dict) -> str:
    """Build seconds of a learned attack's artefacts, from the records the artefact store
    keeps beside them (written when the artefact was built; "-" for fixed triggers)."""
    from detox.cache import Store

    keys = record.get("artefacts") or []
    if not keys:
        return "-"
    store, total = Store("artefacts"), 0.0
    for key in keys:
        entry = store.get(key)
        rec_file = entry.path / "record.json" if entry is not None else None
        if rec_file is None or not rec_file.is_file():
            return "?"
        rec = json.loads(rec_file.read_text())
        parts = [v for k, v in rec.items() if k.endswith("_seconds")]
        total += float(rec["seconds"]) if "seconds" in rec else float(sum(parts))
    return f"{total:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--attacks", default=DEFAULT, help="cells; 'clean' = no attack")
    ap.add_argument("--suite", default="badloss-cifar10", help="multi-attack cell ('' = none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", required=True)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--table-only", action="store_true", help="only tabulate finished cells")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    overrides = parse_overrides(args.overrides)
    cells = [c.strip() for c in args.attacks.split(",") if c.strip()]
    if args.suite:
        cells.append(args.suite)
    for cell in [] if args.table_only else cells:
        f = out / f"{cell}.json"
        if f.is_file():
            print(f"{cell}: done already ({f})")
            continue
        attacks = None if cell == "clean" else cell
        res = run_cell(cell, attacks, args.preset, args.seed, device, args.data_dir, overrides,
                       not args.quiet)  # fmt: skip
        res["environment"] = environment()
        atomic_write_json(f, res)
        print(json.dumps({"cell": cell, "ca": res["evaluation"]["ca"],
                          "asr": {a: v["asr"] for a, v in res["evaluation"]["attacks"].items()}}))  # fmt: skip
    # table
    results = {
        c: json.loads((out / f"{c}.json").read_text())
        for c in cells
        if (out / f"{c}.json").is_file()
    }
    clean_ca = results.get("clean", {}).get("evaluation", {}).get("ca")
    rows = []
    for cell, r in results.items():
        ev = r["evaluation"]
        for a in r["attacks"] or [{"name": "(none)", "label_mode": "-", "n_poisoned": 0}]:
            att = ev["attacks"].get(a["name"], {})
            rows.append({
                "cell": cell,
                "attack": a["name"],
                "label": a.get("label_mode", "-"),
                "poisoned": a.get("n_poisoned", 0),
                "CA %": f"{100 * ev['ca']:.2f}",
                "CA drop vs clean (pts)": "-" if clean_ca is None else f"{100 * (clean_ca - ev['ca']):.2f}",
                "ASR %": "-" if not att else f"{100 * att['asr']:.2f}",
                "PA %": "-" if not att else f"{100 * att['pa']:.2f}",
                "train s": f"{r['victim'].get('train_seconds', 0):.0f}",
                "artefact s": artefact_seconds(a),
            })  # fmt: skip
    md = to_markdown(rows)
    atomic_write_text(out / "attacks.md", md)
    print(md)


if __name__ == "__main__":
    main()
