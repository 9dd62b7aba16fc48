"""Sample grids of poisoned data: what each attack does to an image.

:func:`attack_grid` draws, for every attack of a :class:`~detox.data.PoisonedSet`, ``n``
examples as triplets: the clean test image, its triggered version, and the amplified
absolute difference (the trigger). Images come from the attack's triggered test set and the
clean test set it indexes (``pset.test``); when the triggered set is missing but the clean
test set is there, the attack is rebuilt from its record (same seed, same trigger). Without
a clean test set only the poisoned training images can be shown (no difference map).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detox.errors import ConfigError
from detox.utils.io import atomic_write_bytes


def _pairs(pset: Any, i: int, rec: dict[str, Any], n: int):
    """(clean uint8 (k,C,H,W) or None, poisoned uint8 (k,C,H,W)) for attack ``i``."""
    name = rec["name"]
    trig = pset.triggered.get(name)
    if trig is not None and len(trig) and pset.test is not None:
        pick = np.linspace(0, len(trig) - 1, num=min(n, len(trig))).round().astype(int)
        pick = torch.as_tensor(np.unique(pick))
        return pset.test.x[trig.index[pick]], trig.x[pick]
    if pset.test is not None:
        from detox.attacks.poison import attack_from_record

        attack = attack_from_record(rec, pset.num_classes)
        elig = attack.target_map.eligible(pset.test.y).nonzero().flatten()
        if len(elig):
            pick = elig[
                torch.as_tensor(
                    np.unique(
                        np.linspace(0, len(elig) - 1, num=min(n, len(elig))).round().astype(int)
                    )
                )
            ]
            clean = pset.test.x[pick]
            return clean, attack.apply_uint8(clean, train=False)
    idx = (pset.attack_id == i).nonzero().flatten()[:n]
    return None, pset.x[idx]


def _hwc(x: torch.Tensor) -> np.ndarray:
    a = x.permute(1, 2, 0).cpu().numpy()
    return a[..., 0] if a.shape[-1] == 1 else a


def attack_grid(pset: Any, out_png: str | os.PathLike, n: int = 4, dpi: int = 100) -> Path:
    """Write a PNG grid: one row per attack, ``n`` (clean, poisoned, |difference|) triplets.

    The difference is the per-pixel maximum over channels of ``|poisoned - clean|``,
    amplified per row so that its largest value is white (the factor is in the row title).
    Returns the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if n < 1:
        raise ConfigError(f"n={n}: expected at least 1 example per attack")
    records = list(pset.attacks)
    if not records:
        raise ConfigError("attack_grid: the PoisonedSet has no attacks to show")
    cols = 3 * n
    fig = Figure(figsize=(1.15 * cols, 1.45 * len(records) + 0.4), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(records), cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for r, rec in enumerate(records):
        clean, poisoned = _pairs(pset, r, rec, n)
        amp = None
        if clean is not None:
            diff = (poisoned.float() - clean.float()).abs().amax(dim=1)  # k H W, 0-255
            peak = float(diff.max())
            amp = 255.0 / peak if peak > 0 else 1.0
        for j in range(len(poisoned)):
            base = 3 * j
            if clean is not None:
                axes[r, base].imshow(_hwc(clean[j]), cmap="gray", interpolation="nearest")
            else:
                axes[r, base].text(
                    0.5, 0.5, "clean\nnot stored", ha="center", va="center", fontsize=7
                )
            axes[r, base + 1].imshow(_hwc(poisoned[j]), cmap="gray", interpolation="nearest")
            if clean is not None:
                d = (diff[j] * amp / 255.0).clamp(0, 1).numpy()
                axes[r, base + 2].imshow(d, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            if r == len(records) - 1:
                for k, lab in enumerate(("clean", "poisoned", "|diff|")):
                    ax = axes[r, base + k]
                    ax.text(
                        0.5, -0.08, lab, transform=ax.transAxes, fontsize=7, ha="center", va="top"
                    )
        tgt = rec.get("target")
        tname = pset.classes[tgt] if isinstance(tgt, int) and 0 <= tgt < len(pset.classes) else tgt
        title = (
            f"{rec['name']}  ({rec.get('label_mode', '?')} label, "
            f"{rec.get('target_mode', 'all2one')} -> {tname}, "
            f"{rec.get('n_poisoned', '?')} poisoned)"
        )
        if amp is not None:
            title += f"   |diff| x{amp:.0f}"
        axes[r, 0].text(0.0, 1.25, title, transform=axes[r, 0].transAxes, fontsize=8, ha="left")
    fig.subplots_adjust(
        left=0.01,
        right=0.99,
        bottom=0.25 / fig.get_figheight(),
        top=1 - 0.35 / fig.get_figheight(),
        wspace=0.05,
        hspace=0.55,
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(out_png, buf.getvalue())
