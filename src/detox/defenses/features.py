"""Penultimate-layer features of a classifier, batched on the device: what feature-space
detectors (Spectral Signatures, Activation Clustering, SCAn) read."""

from __future__ import annotations

import torch
from torch import nn

from detox.data.base import to_float
from detox.errors import ConfigError


@torch.inference_mode()
def penultimate_features(
    model: nn.Module, x: torch.Tensor, device: torch.device | str, batch_size: int = 512
) -> torch.Tensor:
    """``model.features`` (the input of its last layer) for uint8 or float images ``x``,
    in eval mode, float32, on the CPU: (N, D)."""
    if not hasattr(model, "features"):
        raise ConfigError(f"{type(model).__name__} exposes no features(): a feature-space "
                          "detector needs a detox classifier")  # fmt: skip
    model.eval()
    dev = torch.device(device)
    out = []
    for i in range(0, len(x), batch_size):
        out.append(model.features(to_float(x[i : i + batch_size], dev)).float().cpu())
    return torch.cat(out) if out else torch.empty(0, 0)
