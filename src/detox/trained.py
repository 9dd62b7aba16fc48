"""Classifiers trained once and reused: :func:`train_classifier` and its cache key.

Victims, the models retrained after a cleanse and the surrogates of learned attacks are
all trained by the one training loop (:func:`detox.training.train`) through this function,
and kept in the ``victims`` store of :mod:`detox.cache`, keyed by a content hash
(:func:`victim_key`) of the training images and labels, the training settings, the code of
the training loop and of every model module (transitively), the dataset and its
normalisation, the runtime (device, bf16, CPU threads) and the training hooks (a
training-controlled attack's :class:`~detox.training.TrainHook`: its fingerprint joins the
key, and what it learned is kept with the model as ``hook-<i>.safetensors``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detox import __version__
from detox.cache import Store
from detox.config import asdict
from detox.models import build_model, load_checkpoint, save_checkpoint
from detox.training import TrainConfig, train
from detox.utils.device import resolve_device
from detox.utils.io import atomic_write_json, read_json


def _code_version() -> str:
    """Digest of the code a trained model depends on: the training loop, every model module
    and every detox module they import (transitively), plus the library versions."""
    import detox.models as models_pkg
    import detox.training as training_mod
    from detox.utils.fingerprint import code_fingerprint

    models = [f"detox.models.{f.stem}" for f in Path(models_pkg.__file__).parent.glob("*.py")]
    return __version__ + ":" + code_fingerprint(training_mod, *models)[:16]


def victim_key(x: torch.Tensor, y: torch.Tensor, tcfg: TrainConfig, extra: Any = None) -> str:
    """Content hash of (training images, labels, training config, code version, ``extra``:
    the dataset, its normalisation, the runtime and any training hooks)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x.cpu().numpy()).tobytes())
    h.update(np.ascontiguousarray(y.cpu().numpy()).tobytes())
    cfg = {k: v for k, v in asdict(tcfg).items() if k != "progress"}
    h.update(repr(sorted(cfg.items())).encode())
    h.update(repr(extra).encode())
    h.update(_code_version().encode())
    return h.hexdigest()[:24]


def train_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    classes: list[str],
    tcfg: TrainConfig,
    device: torch.device | str,
    dataset: str | None = None,
    cache: bool = True,
    desc: str = "victim",
    hooks: Sequence[Any] = (),
) -> tuple[nn.Module, dict[str, Any]]:
    """Train (or load from the cache) a classifier on uint8 images ``x``.

    ``hooks``: :class:`~detox.training.TrainHook` objects that shape the training (a
    training-controlled attack); on a cache hit their learned state is loaded back."""
    from detox.models.base import normalization_for
    from detox.utils.fingerprint import runtime_fingerprint

    dev = resolve_device(device) if isinstance(device, str) else device
    extra: tuple = (dataset, normalization_for(dataset), runtime_fingerprint(dev))
    if hooks:  # only then, so that the keys of hook-free trainings do not change
        extra = (*extra, [h.fingerprint() for h in hooks])
    key = victim_key(x, y, tcfg, extra)
    store = Store("victims")
    entry = store.get(key) if cache else None
    if entry is not None:
        from safetensors.torch import load_file

        info = read_json(entry.file("train.json"))
        info["cached"] = True
        for i, h in enumerate(hooks):
            h.load_state_dict(load_file(str(entry.file(f"hook-{i}.safetensors"))))
        return load_checkpoint(entry.path, device), info
    model = build_model(
        tcfg.model,
        len(classes),
        width=tcfg.width,
        in_channels=x.shape[1],
        dataset=dataset,
        seed=tcfg.seed,
    )
    res = train(model, x, y, tcfg, device=device, desc=desc, callbacks=list(hooks))
    info = {
        "key": key,
        "train_seconds": round(res.seconds, 2),
        "images_per_second": round(res.images_per_second, 1),
        "history": res.history,
        "cached": False,
    }
    if cache:
        from safetensors.torch import save_file

        def write(folder: Path) -> None:
            save_checkpoint(res.model, folder, extra={"classes": classes, "train": asdict(tcfg)})
            atomic_write_json(folder / "train.json", info)
            for i, h in enumerate(hooks):
                state = {k: v.detach().cpu().contiguous() for k, v in h.state_dict().items()}
                save_file(state, str(folder / f"hook-{i}.safetensors"))

        given = {"dataset": dataset, "images": list(x.shape), "train": asdict(tcfg)}
        store.put(key, write, given)
    return res.model, info
