"""Classifiers (and, in :mod:`detox.models.diffusion`, the diffusion backend).

``build_model(name, num_classes, width=1.0, mean=..., std=...)`` returns a
:class:`Classifier`: the backbone behind a fixed normalisation layer, so every model
takes float images in [0, 1]. That is the interface black-box defenses rely on.
"""

from detox.models import airnet, resnet, small_cnn, vgg  # noqa: F401  (register the models)
from detox.models.base import (
    MODELS,
    Classifier,
    build_model,
    load_checkpoint,
    save_checkpoint,
)

__all__ = ["MODELS", "Classifier", "build_model", "load_checkpoint", "save_checkpoint"]
