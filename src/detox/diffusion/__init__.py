"""Diffusion models for test-time purification (SampDetox): build, train, save, load.

Built on diffusers (``UNet2DModel`` + ``DDPMScheduler``/``DDIMScheduler``), stored in the
diffusers folder format (safetensors), so any diffusers model of the right image size can
be used in place of one trained here (e.g. ``google/ddpm-cifar10-32`` from a local copy).
"""

from detox.diffusion.backend import (
    DiffusionModel,
    build_unet,
    load_diffusion,
    make_scheduler,
    new_diffusion_model,
    normalize_schedule,
    packaged_diffusion,
    save_diffusion,
)
from detox.diffusion.presets import DiffusionTrainConfig, make_train_config
from detox.diffusion.train import DiffusionTrainResult, train_diffusion

__all__ = [
    "DiffusionModel",
    "DiffusionTrainConfig",
    "DiffusionTrainResult",
    "build_unet",
    "load_diffusion",
    "make_scheduler",
    "make_train_config",
    "new_diffusion_model",
    "normalize_schedule",
    "packaged_diffusion",
    "save_diffusion",
    "train_diffusion",
]
