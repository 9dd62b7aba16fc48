"""Figures, drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display).

* :mod:`detox.plots.samples`: per-attack grids of clean / poisoned / |difference| images;
* :mod:`detox.plots.detection`: detector score histograms and ROC curves;
* :mod:`detox.plots.trajectories`: BaDLoss loss trajectories.

Modules are imported on use (``from detox.plots.samples import attack_grid``), so that
importing :mod:`detox.plots` stays cheap.
"""


def save_figure(fig, out_png):
    """Lay out ``fig``, write it to ``out_png`` (creating folders) and close it."""
    from pathlib import Path

    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
