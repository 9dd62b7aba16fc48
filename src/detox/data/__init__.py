"""Datasets, the in-memory image container and the ``PoisonedSet`` data contract."""

from detox.data import loaders as _loaders  # noqa: F401  (registers the datasets)
from detox.data.base import ImageDataset, stratified_subsample, to_float, to_uint8
from detox.data.paths import cache_dir, data_dir, set_data_dir
from detox.data.poisoned import PoisonedSet, TriggeredSet
from detox.data.registry import DATASETS, load_dataset, load_splits

__all__ = [
    "DATASETS",
    "ImageDataset",
    "PoisonedSet",
    "TriggeredSet",
    "cache_dir",
    "data_dir",
    "load_dataset",
    "load_splits",
    "set_data_dir",
    "stratified_subsample",
    "to_float",
    "to_uint8",
]
