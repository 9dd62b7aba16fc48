"""Model registry, the normalising wrapper and safetensors checkpoints."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detox.data.registry import dataset_facts
from detox.errors import ConfigError, DataError, DetoxError
from detox.registry import Registry
from detox.utils.io import atomic_write_json, read_json

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

# Normalisation of datasets without registered facts (image folders, .npz files).
DEFAULT_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def normalization_for(dataset: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of ``dataset``'s training split from its registered facts
    (:func:`detox.data.registry.dataset_facts`: any alias, or a split's name such as
    ``tinyimagenet-train``); :data:`DEFAULT_NORM` for datasets without facts."""
    facts = dataset_facts(dataset)
    return (facts.mean, facts.std) if facts is not None else DEFAULT_NORM


class Classifier(nn.Module):
    """``backbone((x - mean) / std)`` for x in [0, 1]; mean/std are saved buffers."""

    def __init__(
        self,
        backbone: nn.Module,
        mean: Sequence[float] = DEFAULT_NORM[0],
        std: Sequence[float] = DEFAULT_NORM[1],
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        c = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))
        self.meta: dict[str, Any] = dict(meta or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean) / self.std)

    def init_from_data(self, x: torch.Tensor) -> None:
        """Give the backbone training images ([0, 1]) to initialise from, normalised, if it
        initialises from data (AirNet's patch whitening); otherwise nothing."""
        init = getattr(self.backbone, "init_from_data", None)
        if init is not None:
            init((x - self.mean) / self.std)

    def set_whitening_bias_trainable(self, trainable: bool) -> None:
        fn = getattr(self.backbone, "set_whitening_bias_trainable", None)
        if fn is not None:
            fn(trainable)

    def blocks(self) -> list[nn.Module]:
        """The backbone's stages in order (``blocks()``; PSBD drops out after each)."""
        fn = getattr(self.backbone, "blocks", None)
        if fn is None:
            raise ConfigError(f"model {self.meta.get('name')!r} does not expose blocks()")
        return list(fn())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (used by feature-space detectors)."""
        feats = getattr(self.backbone, "features", None)
        if feats is None:
            raise ConfigError(f"model {self.meta.get('name')!r} does not expose features()")
        return feats((x - self.mean) / self.std)


def build_model(
    name: str,
    num_classes: int,
    width: float = 1.0,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    dataset: str | None = None,
    seed: int | None = None,
) -> Classifier:
    """Build a registered classifier. ``width`` multiplies every channel count; ``seed``
    (when given) fixes the initial weights."""
    factory = MODELS.get(name)
    if num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
    if width <= 0:
        raise ConfigError(f"width must be > 0, got {width}")
    if mean is None or std is None:
        mean, std = normalization_for(dataset)
    if len(mean) != in_channels:
        mean, std = (mean[0],) * in_channels, (std[0],) * in_channels
    if seed is not None:
        torch.manual_seed(int(seed))
    backbone = factory(num_classes=num_classes, width=width, in_channels=in_channels)
    meta = {
        "name": name.lower(),
        "num_classes": num_classes,
        "width": width,
        "in_channels": in_channels,
        "mean": list(mean),
        "std": list(std),
        "dataset": dataset,
    }
    return Classifier(backbone, mean, std, meta)


def scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def save_checkpoint(
    model: Classifier, out_dir: str | os.PathLike, extra: dict[str, Any] | None = None
) -> Path:
    """``model.safetensors`` + ``model.json`` (architecture, normalisation, extra info)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = out / ".model.safetensors.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, out / "model.safetensors")
    atomic_write_json(out / "model.json", {"model": model.meta, **(extra or {})})
    return out


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Classifier:
    """Load a checkpoint folder written by :func:`save_checkpoint` (safetensors, no pickle)."""
    from safetensors.torch import load_file

    root = Path(path)
    if root.is_file():
        root = root.parent
    wfile, mfile = root / "model.safetensors", root / "model.json"
    if not wfile.is_file() or not mfile.is_file():
        raise DataError(
            f"{root}: not a detox checkpoint (expected model.safetensors and model.json)"
        )
    try:
        meta = read_json(mfile)["model"]
        model = build_model(
            meta["name"],
            meta["num_classes"],
            width=meta.get("width", 1.0),
            in_channels=meta.get("in_channels", 3),
            mean=meta["mean"],
            std=meta["std"],
            dataset=meta.get("dataset"),
        )
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, DetoxError):
            raise
        raise DataError(f"{mfile}: not a valid model description ({type(e).__name__}: {e})") from e
    try:
        state = load_file(str(wfile))
    except Exception as e:  # safetensors raises its own error type for bad headers
        raise DataError(f"{wfile}: not a readable safetensors file ({e})") from e
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise DataError(
            f"{wfile}: the weights do not fit the model {mfile} describes "
            f"({first[1].strip() if len(first) > 1 else first[0]})"
        ) from e
    return model.to(device).eval()
