"""Figures, drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display).

* :mod:`detox.plots.samples`: per-attack grids of clean / poisoned / |difference| images;
* :mod:`detox.plots.detection`: detector score histograms and ROC curves;
* :mod:`detox.plots.trajectories`: BaDLoss loss trajectories.

Modules are imported on use (``from detox.plots.samples import attack_grid``), so that
importing :mod:`detox.plots` stays cheap.
"""
