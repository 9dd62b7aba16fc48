"""The experiment pipeline shared by every command and the benchmark.

    data -> poison (attacks, seeded) -> train the victim (cached) -> evaluate CA / PA / ASR
         -> [detector: score -> cut -> retrain on the kept examples -> evaluate + detection]
         -> [purifier: purify test inputs -> evaluate]
         -> [input filter: fit on trusted inputs -> reject test inputs -> evaluate]
         -> [model repair: repair a copy of the victim -> evaluate]

Each step is a function so that commands, benchmarks and tests compose them. Victims are
cached by a content hash of their training data, training config and code version: a
victim is trained once and reused by every defense that needs it.

One module per concern: :mod:`~detox.pipeline.victims` (configs, poisoning, cached
victims), :mod:`~detox.pipeline.evaluation` (CA / PA / ASR, purified evaluation),
:mod:`~detox.pipeline.detection` (probes, detect, cleanse-and-retrain) and
:mod:`~detox.pipeline.defenses` (:func:`run_defense`); this package re-exports them.
"""

from detox.pipeline.defenses import (
    DEFENSE_KINDS,
    DefenseKind,
    DefenseRun,
    defense_kind,
    defense_names,
    register_kind,
    run_defense,
)
from detox.pipeline.detection import (
    Detection,
    choose_probes,
    cleanse_and_retrain,
    detect,
    detection_report,
    detector_figures,
    select_clean_probes,
    write_detection,
    write_scores,
)
from detox.pipeline.evaluation import (
    evaluate_backdoor,
    evaluation_subset,
    filtered_evaluation,
    purification_samples,
    purified_evaluation,
)
from detox.pipeline.victims import (
    ExperimentConfig,
    make_poisoned_set,
    resolve_configs,
    train_victim,
)
from detox.trained import train_classifier, victim_key

__all__ = [
    "DEFENSE_KINDS",
    "DefenseKind",
    "DefenseRun",
    "Detection",
    "defense_kind",
    "defense_names",
    "evaluation_subset",
    "filtered_evaluation",
    "register_kind",
    "ExperimentConfig",
    "choose_probes",
    "cleanse_and_retrain",
    "detect",
    "detection_report",
    "detector_figures",
    "evaluate_backdoor",
    "make_poisoned_set",
    "purification_samples",
    "purified_evaluation",
    "resolve_configs",
    "run_defense",
    "select_clean_probes",
    "train_classifier",
    "train_victim",
    "victim_key",
    "write_detection",
    "write_scores",
]
