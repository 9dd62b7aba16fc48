"""``detox data info DATASET``: what a dataset holds and where it was loaded from."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from detox.data.fetch import MissingDataError
from detox.data.registry import DATASETS, dataset_facts, load_dataset
from detox.data.splits import SPLITS
from detox.errors import DataError


def dataset_info(
    name: str, data_dir: str | os.PathLike | None = None, image_size: int | None = None
) -> dict[str, Any]:
    """Load every split of ``name`` and summarise it.

    Returns ``dataset``, ``counts`` (images per split), ``splits`` (per split: count,
    per-class counts, source, checksum status and detail), ``num_classes``, ``classes``,
    ``image_shape`` (C, H, W), ``source`` (where it was loaded from), ``checksum``
    ("verified" when every split's files matched known checksums, else "unverified") and
    ``facts`` (the registered :class:`~detox.data.registry.DatasetFacts`: normalisation,
    native size, shipped diffusion model; None for folders and ``.npz`` files).
    A split that fails to load is reported under ``errors``; if all fail the first error
    is raised.
    """
    splits: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    first_error: DataError | None = None
    loaded = {}
    for split in SPLITS:
        try:
            ds = load_dataset(name, split, data_dir=data_dir, image_size=image_size)
        except MissingDataError:
            raise  # no copy at all: the other split would only repeat the search
        except DataError as e:
            errors[split] = str(e)
            first_error = first_error or e
            continue
        loaded[split] = ds
        meta = ds.meta
        splits[split] = {
            "count": len(ds),
            "class_counts": [int(c) for c in ds.class_counts()],
            "image_shape": list(ds.image_shape),
            "source": meta.get("source"),
            "source_kind": meta.get("source_kind"),
            "checksum": meta.get("checksum", "unverified"),
            "checksum_detail": meta.get("checksum_detail", ""),
        }
    if not loaded:
        assert first_error is not None
        raise first_error
    ref = next(iter(loaded.values()))
    statuses = {s["checksum"] for s in splits.values()}
    sources = list(dict.fromkeys(str(s["source"]) for s in splits.values()))
    info: dict[str, Any] = {
        "dataset": ref.meta.get("dataset", name),
        "name": name,
        "registered": name in DATASETS,
        "counts": {k: v["count"] for k, v in splits.items()},
        "num_classes": ref.num_classes,
        "classes": list(ref.classes),
        "image_shape": list(ref.image_shape),
        "source": sources[0] if len(sources) == 1 else sources,
        "checksum": "verified" if statuses == {"verified"} and not errors else "unverified",
        "splits": splits,
    }
    facts = dataset_facts(info["dataset"]) or dataset_facts(name)
    info["facts"] = dataclasses.asdict(facts) if facts is not None else None
    if errors:
        info["errors"] = errors
    return info


def format_info(info: dict[str, Any]) -> str:
    """A human-readable rendering of :func:`dataset_info` for the command line."""
    lines = [f"dataset       {info['dataset']}"]
    for split, s in info["splits"].items():
        lines.append(f"{split:<13} {s['count']} images")
    for split, err in info.get("errors", {}).items():
        lines.append(f"{split:<13} ERROR: {err.splitlines()[0]}")
    lines.append(f"classes       {info['num_classes']}: {', '.join(info['classes'])}")
    lines.append(f"image shape   {' x '.join(str(v) for v in info['image_shape'])} (C x H x W)")
    src = info["source"]
    lines.append(f"source        {src if isinstance(src, str) else '; '.join(src)}")
    details = list(dict.fromkeys(s["checksum_detail"] for s in info["splits"].values()))
    lines.append(f"checksum      {info['checksum']} ({'; '.join(d for d in details if d)})")
    facts = info.get("facts")
    if facts:
        lines.append(f"normalisation mean {tuple(facts['mean'])}, std {tuple(facts['std'])}")
        lines.append(f"diffusion     {facts['diffusion'] or 'none shipped'} (SampDetox default)")
    return "\n".join(lines)
