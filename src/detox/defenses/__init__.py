"""Defenses: training-set detectors (:mod:`.detectors`) and test-time purifiers (:mod:`.purifiers`).

No defense imports another; :mod:`detox.bench` is the only place that knows them all.
"""
