"""One self-contained HTML page per bench run: tables, sample grids, score histograms,
ROC curves, BaDLoss loss trajectories, purified samples and a glossary.

Every figure is embedded as a base64 PNG and the style sheet is inline, so the file opens
offline from the file system and can be mailed as it is. No script runs on the page.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any

from detox.bench.tables import DETECT_METRICS, EVAL_METRICS, column_label, effects, grid_rows
from detox.utils.io import atomic_write_text

GLOSSARY = {
    "CA": "clean accuracy: accuracy on the clean test set (higher is better).",
    "PA": "poisoned accuracy: accuracy with respect to the true label on triggered test "
    "images whose true label is not the attack's target (higher is better).",
    "ASR": "attack success rate: fraction of those triggered test images classified as "
    "the attack's target (lower is better for a defense).",
    "AUROC": "area under the ROC curve of a detector's scores, this attack's poisoned "
    "training examples against all clean ones (1.0 = perfect ranking, 0.5 = chance).",
    "TPR": "true-positive rate: fraction of this attack's poisoned training examples the "
    "cut removed.",
    "FPR": "false-positive rate: fraction of clean training examples the cut removed.",
    "mean±std": "over the seeds of the grid (sample standard deviation); one seed shows "
    "the value alone. Bold marks the best value of each metric in a row.",
}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#1d2330;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #d8dce3;
padding-bottom:.2rem}h3{margin-top:1.4rem}.meta{color:#5a6270;font-size:.9rem}
table{border-collapse:collapse;margin:.6rem 0 1rem;font-size:.88rem}
th,td{border:1px solid #d8dce3;padding:.3rem .55rem;text-align:right;white-space:nowrap}
th{background:#f1f3f6}td:first-child,th:first-child{text-align:left}
b{color:#0b5d1e}figure{display:inline-block;margin:.4rem 1rem .8rem 0;vertical-align:top}
figure img{max-width:560px;border:1px solid #e3e6eb}figcaption{font-size:.8rem;color:#5a6270}
dl dt{font-weight:600;margin-top:.4rem}dl dd{margin-left:1.2rem}
.cells td{font-size:.8rem}
"""


def _img(path: Path, caption: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cap = html.escape(caption)
    return (
        f'<figure><img alt="{cap}" src="data:image/png;base64,{data}">'
        f"<figcaption>{cap}</figcaption></figure>"
    )


def _html_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            # grid_rows marks the best values with \x01..\x02; escape the rest
            txt = html.escape(str(r.get(c, ""))).replace("\x01", "<b>").replace("\x02", "</b>")
            cells.append(f"<td>{txt}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def smallest_class_removal(det: dict[str, Any], n: int = 5) -> list[dict[str, Any]]:
    """Removal rate of the ``n`` classes with the fewest training examples (true labels),
    from a detection report; empty when the report has no class counts."""
    counts, rates = det.get("per_class_count"), det.get("per_class_removal")
    if not counts or not rates:
        return []
    order = sorted(range(len(counts)), key=lambda c: (counts[c], c))[:n]
    return [{"class": c, "examples": counts[c], "removed %": 100 * rates[c]} for c in order]


def _removal_table(r: dict[str, Any]) -> str:
    det = r.get("detection") or {}
    rows = smallest_class_removal(det)
    if not rows:
        return ""
    overall = (
        100
        * float(det.get("overall", {}).get("removed", 0))
        / max(1, int(det.get("overall", {}).get("n", 1)))
    )
    body = [{**row, "removed %": f"{row['removed %']:.1f}"} for row in rows]
    return (
        f"<p class='meta'>{html.escape(column_label(r))}: removal in the {len(rows)} smallest "
        f"classes (overall {overall:.1f}% of the non-probe examples)</p>" + _html_table(body)
    )


def render_report(out: Path, cfg: Any, results: list[dict[str, Any]], tables: dict) -> str:
    from detox.runs import environment

    env = environment()
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>detox bench: {html.escape(cfg.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>detox bench: {html.escape(cfg.name)}</h1>",
        f"<p class='meta'>{len(results)} finished cell(s) of {len(cfg.cells())}; written "
        f"{time.strftime('%Y-%m-%d %H:%M')}; detox {env['detox']}, torch {env['torch']}, "
        f"{html.escape(env['cuda'] or 'CPU')} ({env['cpu_count']} cores); config "
        f"{html.escape(cfg.source)}</p>",
    ]
    glance = [
        {
            "dataset": e["dataset"],
            "attack": e["attack"],
            "defense": e["defense"],
            "ASR (%)": f"{e['asr_before']:.1f} \u2192 {e['asr_after']:.1f}",
            "CA (%)": f"{e['ca_before']:.1f} \u2192 {e['ca_after']:.1f}",
            "CA cost (points)": f"{e['ca_cost']:.1f}",
            "compared on": "its test subset" if e.get("same_images") else "all test images",
        }
        for e in effects(tables)
    ]
    if glance:
        parts.append(
            "<h2>At a glance</h2><p>What each defense did to each attack, against the "
            "undefended victim of the same row (a purifier evaluated on a subset of the "
            "test images, against the undefended victim on the same images).</p>"
            + _html_table(glance)
        )
    parts.append("<h2>Tables</h2>")
    if not tables:
        parts.append("<p>No finished cells yet.</p>")
    for ds, t in tables.items():
        for title, metrics in (
            ("CA / PA / ASR (%)", EVAL_METRICS),
            ("detection AUROC / TPR / FPR (%)", DETECT_METRICS),
        ):
            rows = grid_rows(t, metrics, bold=("\x01", "\x02"))
            if rows and len(rows[0]) > 1:
                parts.append(f"<h3>{html.escape(ds)}: {title}</h3>{_html_table(rows)}")
    by_group: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_group.setdefault(r["group"], []).append(r)
    parts.append("<h2>Figures</h2>")
    for gid, rs in by_group.items():
        first = rs[0]
        parts.append(
            f"<h3>{html.escape(first['dataset'])} · {html.escape(first['attack'])} · seed "
            f"{first['seed']} · preset {html.escape(first['preset'])}</h3>"
        )
        parts.append(_img(out / "groups" / gid / "samples.png", "clean vs poisoned, trigger map"))
        for r in rs:
            label = column_label(r)
            files = out / "cells" / r["cell"]
            if r["kind"] == "detector":
                parts.append(_removal_table(r))
            # the figures the defense's run listed (caption -> file in its cell folder)
            for caption, name in (r.get("defense_info") or {}).get("figures", {}).items():
                parts.append(_img(files / name, f"{label}: {caption}"))
    parts.append("<h2>Cells</h2>")
    cell_rows = [
        {
            "cell": r["cell"],
            "defense": column_label(r),
            "CA %": f"{100 * r['evaluation']['ca']:.2f}" if r.get("evaluation") else "-",
            "seconds": f"{r.get('seconds', 0):.0f}",
            "victim cached": str((r.get("victim") or {}).get("cached")),
            "finished": r.get("finished", ""),
        }
        for r in results
    ]
    parts.append(f"<div class='cells'>{_html_table(cell_rows)}</div>")
    parts.append("<h2>Glossary</h2><dl>")
    for k, v in GLOSSARY.items():
        parts.append(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>")
    parts.append("</dl></body></html>")
    return "\n".join(p for p in parts if p)


def write_report(out: str | Path, cfg: Any, results: list[dict[str, Any]], tables: dict) -> Path:
    """Write ``OUT/report.html`` (atomically) and return its path."""
    out = Path(out)
    path = out / "report.html"
    atomic_write_text(path, render_report(out, cfg, results, tables))
    return path
