"""Result tables in the papers' layout: rows = attacks, columns = models/defenses,
cells = CA / PA / ASR (percent), written as markdown and CSV."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from detox.utils.io import atomic_write_text


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def attack_table(evaluations: dict[str, dict[str, Any]], detection: dict[str, Any] | None = None):
    """Rows (list of dicts) of one run: per attack, CA / PA / ASR under each model.

    ``evaluations`` maps a column name (``"no defense"``, ``"ultraclean"``) to the output
    of :func:`detox.pipeline.evaluate_backdoor`; ``detection`` maps a detector name to its
    detection report (adds AUROC / TPR / FPR columns).
    """
    attacks: list[str] = []
    for ev in evaluations.values():
        attacks += [a for a in ev["attacks"] if a not in attacks]
    rows = []
    for a in attacks or ["(none)"]:
        row: dict[str, Any] = {"attack": a}
        for col, ev in evaluations.items():
            row[f"{col} CA"] = _pct(ev["ca"])
            att = ev["attacks"].get(a, {})
            row[f"{col} PA"] = _pct(att.get("pa"))
            row[f"{col} ASR"] = _pct(att.get("asr"))
        for det, rep in (detection or {}).items():
            m = rep["per_attack"].get(a, {})
            row[f"{det} AUROC"] = _pct(m.get("auroc"))
            row[f"{det} TPR"] = _pct(m.get("tpr"))
            row[f"{det} FPR"] = _pct(m.get("fpr"))
        rows.append(row)
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_tables(rows: list[dict[str, Any]], out_dir: str | Path, stem: str = "results") -> str:
    md = to_markdown(rows)
    atomic_write_text(Path(out_dir) / f"{stem}.md", md)
    atomic_write_text(Path(out_dir) / f"{stem}.csv", to_csv(rows))
    return md


# ---------------------------------------------------------------------------------------
# bench grids: mean +/- std over seeds, best in bold

#: metric -> (label, higher is better)
EVAL_METRICS = {"ca": ("CA", True), "pa": ("PA", True), "asr": ("ASR", False)}
DETECT_METRICS = {"auroc": ("AUROC", True), "tpr": ("TPR", True), "fpr": ("FPR", False)}
NONE_LABEL = "no defense"


def _stats(values: list[float]) -> dict[str, Any]:
    vals = [100.0 * v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(vals) / len(vals)
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": math.sqrt(var), "n": len(vals)}


def _settings(pairs: Any) -> str:
    """``" (k=v, ...)"`` for a cell's override pairs (tuples, or lists after JSON)."""
    return " (" + ", ".join(f"{k}={v}" for k, v in pairs) + ")" if pairs else ""


def column_label(r: dict[str, Any]) -> str:
    """A cell's column: its defense, tagged with a defense preset other than the cell's
    preset and with its settings, so that variants of one defense get columns of their own
    (``"ultraclean (known_target=0)"``) instead of being averaged together."""
    if r["defense"] == "none":
        return NONE_LABEL
    dp = r.get("defense_preset")
    tag = f" [{dp}]" if dp and dp != r.get("preset") else ""
    return f"{r['defense']}{tag}{_settings(r.get('defense_overrides'))}"


def _row_label(item: str, name: str | None, n_attacks: int, overrides: Any = ()) -> str:
    """A single attack's row is its spec as written; each attack of a multi-attack set
    gets ``"<set>: <attack>"``; training overrides that set the cell's group apart from
    the other cells of its dataset are appended."""
    if name is None:
        return "(no attack)" + _settings(overrides)
    return (item if n_attacks == 1 else f"{item}: {name}") + _settings(overrides)


def bench_tables(results: list[dict[str, Any]], defenses: list[str]) -> dict[str, Any]:
    """Aggregate cell results over seeds: per dataset, rows = attacks (each attack of a
    multi-attack set is its own row), columns = defenses; CA / PA / ASR of every column
    and AUROC / TPR / FPR of every detector, as mean / std / n in percent."""
    raw: dict[str, dict[str, dict[str, dict[str, list[float]]]]] = {}
    order: dict[str, list[str]] = {}
    cols: dict[str, list[str]] = {}
    # training overrides that every cell of a dataset shares (a bench's [set]) name no row
    items = [(r["dataset"], {(k, repr(v)) for k, v in r.get("overrides") or ()}) for r in results]
    shared = {ds: set.intersection(*[o for d, o in items if d == ds]) for ds, _ in items}
    for r in results:
        ds = r["dataset"]
        own = [(k, v) for k, v in r.get("overrides") or () if (k, repr(v)) not in shared[ds]]
        names = r.get("attack_names") or []
        ev = r["evaluation"]
        ref = r.get("reference")  # the undefended victim on a purifier's subset
        det = (r.get("detection") or {}).get("per_attack", {})
        col = column_label(r)
        cols.setdefault(ds, [])
        for target in [*(names or [None])]:
            label = _row_label(r["attack"], target, len(names), own)
            order.setdefault(ds, [])
            if label not in order[ds]:
                order[ds].append(label)
            cell = raw.setdefault(ds, {}).setdefault(label, {}).setdefault(col, {})
            if ev is None:  # detect_only: detection figures, no retrained model
                if target is not None and target in det:
                    for m in DETECT_METRICS:
                        cell.setdefault(m, []).append(det[target].get(m))
                continue
            cell.setdefault("ca", []).append(ev["ca"])
            if ref is not None:
                cell.setdefault("ca_ref", []).append(ref["ca"])
            if target is not None:
                att = ev["attacks"].get(target, {})
                cell.setdefault("pa", []).append(att.get("pa"))
                cell.setdefault("asr", []).append(att.get("asr"))
                if ref is not None:
                    cell.setdefault("asr_ref", []).append(ref["attacks"].get(target, {}).get("asr"))
                if target in det:
                    for m in DETECT_METRICS:
                        cell.setdefault(m, []).append(det[target].get(m))
        if col not in cols[ds]:
            cols[ds].append(col)
    wanted = [NONE_LABEL if d == "none" else d for d in defenses]
    out: dict[str, Any] = {}
    for ds, rows in raw.items():
        columns = [c for c in wanted if c in cols[ds]] + [c for c in cols[ds] if c not in wanted]
        out[ds] = {
            "rows": order[ds],
            "columns": columns,
            "cells": {
                row: {c: {m: _stats(v) for m, v in rows[row].get(c, {}).items()} for c in columns}
                for row in order[ds]
            },
        }
    return out


def _fmt(s: dict[str, Any] | None) -> str:
    if not s or s.get("mean") is None:
        return "-"
    return f"{s['mean']:.2f}" if s["n"] < 2 else f"{s['mean']:.2f}±{s['std']:.2f}"


def _best(cells: dict[str, dict], metric: str, higher: bool) -> set[str]:
    vals = {
        c: v[metric]["mean"] for c, v in cells.items() if v.get(metric, {}).get("mean") is not None
    }
    if len(vals) < 2:
        return set()
    top = max(vals.values()) if higher else min(vals.values())
    return {c for c, v in vals.items() if abs(v - top) < 5e-3}


def grid_rows(table: dict[str, Any], metrics: dict[str, tuple[str, bool]], bold=("**", "**")):
    """Rows of one dataset's table for ``metrics``: each cell joins the metrics with ' / ',
    the best value of each metric in the row wrapped in ``bold``. Columns without any of
    the metrics are left out."""
    cols = [
        c
        for c in table["columns"]
        if any(m in table["cells"][r].get(c, {}) for r in table["rows"] for m in metrics)
    ]
    rows = []
    for r in table["rows"]:
        cells = table["cells"][r]
        best = {
            m: _best({c: cells.get(c, {}) for c in cols}, m, hi) for m, (_, hi) in metrics.items()
        }
        row: dict[str, Any] = {"attack": r}
        for c in cols:
            parts = []
            for m in metrics:
                txt = _fmt(cells.get(c, {}).get(m))
                parts.append(f"{bold[0]}{txt}{bold[1]}" if c in best[m] and txt != "-" else txt)
            row[c] = " / ".join(parts)
        rows.append(row)
    return rows


def bench_markdown(tables: dict[str, Any]) -> str:
    parts = []
    for ds, t in tables.items():
        for title, metrics in (
            ("CA / PA / ASR (%)", EVAL_METRICS),
            ("detection AUROC / TPR / FPR (%)", DETECT_METRICS),
        ):
            rows = grid_rows(t, metrics)
            if rows and len(rows[0]) > 1:
                parts.append(f"### {ds}: {title}\n\n" + to_markdown(rows))
                if metrics is EVAL_METRICS and (note := subset_note(t)):
                    parts.append(note)
    return "\n".join(parts)


def subset_note(table: dict[str, Any]) -> str:
    """A line naming the columns measured on a subset of the test images (a purifier
    with ``purify_limit``), with the undefended victim's CA on the same images."""
    notes = []
    for c in table["columns"]:
        refs = [table["cells"][r].get(c, {}).get("ca_ref", {}).get("mean") for r in table["rows"]]
        refs = [v for v in refs if v is not None]
        if refs:
            lo, hi = min(refs), max(refs)
            ca = f"{lo:.2f}" if abs(hi - lo) < 5e-3 else f"{lo:.2f}-{hi:.2f}"
            notes.append(f"{c}: on a seeded subset of the test images (purify_limit), where "
                         f"the undefended victim's CA is {ca}")  # fmt: skip
    return ("Note: " + "; ".join(notes) + ".\n") if notes else ""


def effects(tables: dict[str, Any]) -> list[dict[str, Any]]:
    """What each defense did to each attack, against the undefended victim of the same
    row: ASR and CA before and after (percent means), and the CA cost in points. Rows
    without an undefended cell, or columns without ASR (a clean row), are left out. A
    purifier evaluated on a subset of the test images (``purify_limit``) is compared with
    the undefended victim on the same images (its ``ca_ref`` / ``asr_ref``;
    ``same_images`` is then true)."""
    out = []
    for ds, t in tables.items():
        for r in t["rows"]:
            cells = t["cells"][r]
            base = cells.get(NONE_LABEL, {})
            asr0, ca0 = (base.get(m, {}).get("mean") for m in ("asr", "ca"))
            if asr0 is None or ca0 is None:
                continue
            for c in t["columns"]:
                if c == NONE_LABEL:
                    continue
                cell = cells.get(c, {})
                asr1, ca1 = (cell.get(m, {}).get("mean") for m in ("asr", "ca"))
                if asr1 is None or ca1 is None:
                    continue
                ref = [cell.get(m, {}).get("mean") for m in ("asr_ref", "ca_ref")]
                same = None not in ref
                a0, c0 = ref if same else (asr0, ca0)
                out.append(
                    {
                        "dataset": ds,
                        "attack": r,
                        "defense": c,
                        "asr_before": a0,
                        "asr_after": asr1,
                        "ca_before": c0,
                        "ca_after": ca1,
                        "ca_cost": c0 - ca1,
                        "same_images": same,
                    }
                )
    return out


def effect_lines(tables: dict[str, Any]) -> list[str]:
    """:func:`effects` as one sentence each, e.g. ``cifar10 badnets: ultraclean took ASR
    from 98.9% to 1.1%, CA 86.0% -> 85.0% (cost 1.0 points)``."""
    lines = []
    for e in effects(tables):
        cost = e["ca_cost"]
        if round(cost, 1) == 0:
            what = "no CA cost"
        else:
            what = f"cost {cost:.1f} points" if cost > 0 else f"gain {-cost:.1f} points"
        subset = " on its test subset" if e.get("same_images") else ""
        lines.append(
            f"{e['dataset']} {e['attack']}: {e['defense']} took ASR from "
            f"{e['asr_before']:.1f}% to {e['asr_after']:.1f}%, CA {e['ca_before']:.1f}% -> "
            f"{e['ca_after']:.1f}%{subset} ({what})"
        )
    return lines


def bench_csv(tables: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["dataset", "attack", "defense", "metric", "mean", "std", "n"])
    for ds, t in tables.items():
        for r in t["rows"]:
            for c, ms in t["cells"][r].items():
                for m, s in ms.items():
                    if s["n"]:
                        w.writerow([ds, r, c, m, f"{s['mean']:.4f}", f"{s['std']:.4f}", s["n"]])
    return buf.getvalue()


def write_bench_tables(tables: dict[str, Any], out_dir: str | Path) -> str:
    from detox.utils.io import atomic_write_json

    md = bench_markdown(tables)
    atomic_write_text(Path(out_dir) / "tables.md", md)
    atomic_write_text(Path(out_dir) / "tables.csv", bench_csv(tables))
    atomic_write_json(Path(out_dir) / "tables.json", tables)
    return md
