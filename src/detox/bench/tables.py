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
