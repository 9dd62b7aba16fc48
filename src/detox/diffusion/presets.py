"""Settings of diffusion-model training: one typed config, named presets.

Presets (any value can be overridden again):

* ``smoke``: a tiny UNet (channels (16, 32), 1 res-block, no attention, ~0.2M parameters),
  a handful of steps. For tests only: it learns nothing useful.
* ``quick`` (alias ``cpu``): the CPU-sized UNet of CALIBRATION.md (channels (32, 64, 128),
  1 res-block, no attention, 2.5M parameters, ~100 train img/s on 2 cores), cosine
  schedule, timesteps sampled from [0, 120) only (see ``t_max``), 5,000 steps of 64
  images (~1 hour on 2 cores) at lr 2e-4 (DDPM's CIFAR-10 rate). Expect a weak model: CALIBRATION.md shows that clean
  accuracy after SampDetox is decided by the diffusion model's quality. Raise ``steps``
  (or set ``max_minutes``) and train in the background for better results.
* ``paper``: the DDPM CIFAR-10 network (128 channels, multipliers (1, 2, 2, 2),
  attention at 16x16, 2 res-blocks, dropout 0.1, 35.7M parameters), all 1000 timesteps,
  125,000 steps of 80 images (= the authors' 200 epochs of CIFAR-10), for a GPU.

* ``gpu``: the model detox ships, sized for a few minutes of one lent GPU
  (``benchmarks/gpu/``): UNet channels (64, 128, 256), 2 res-blocks, attention at 16x16
  and in the bottleneck, 14.7M parameters; linear schedule, *continuous* levels in
  (0, 150] (``continuous_time``), batch 256, AdamW lr 3e-4 with 200 warm-up steps.

``t_max``: training samples timesteps uniformly from ``[0, t_max)``. SampDetox only ever
noises an image to level ``max(t1, T2)`` and evaluates the network at timesteps
``< max(t1, T2)`` (120 for both the ``paper`` and ``code`` purifier presets), so a model
trained on ``[0, 120)`` spends all its capacity where it is used. Such a model is *only*
valid for purifier settings with ``max(t1, T2) <= t_max``; ``t_max`` is saved in
``detox_diffusion.json`` and the purifier refuses settings beyond it.

``continuous_time``: instead of integer timesteps, sample a fractional level ``l`` uniform
in ``(0, t_max]``, noise with ``abar(l)`` interpolated log-linearly between the schedule's
integer levels, and condition the UNet on the fractional timestep ``l - 1`` (its
sinusoidal embedding takes any real number). The network then knows every noise amount
in the range, not only the schedule's 1000 grid points, so a purifier can run its chain on
*another* schedule (the paper's cosine on a linear-trained model) by asking for the
timestep whose ``abar`` equals its own (:meth:`DiffusionModel.timesteps_for`). The flag is
saved in ``detox_diffusion.json``.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from detox.config import hp, make_config
from detox.errors import ConfigError

C = TypeVar("C")


@dataclasses.dataclass
class DiffusionTrainConfig:
    """Diffusion training settings. Source tags: [code] the SampDetox authors' code,
    [ddpm] the DDPM paper/code, [open] chosen here."""

    # -- network (diffusers UNet2DModel) --
    block_out_channels: tuple[int, ...] = hp(
        (128, 256, 256, 256), "channels per level", "[ddpm]", range="[1, inf)"
    )
    layers_per_block: int = hp(2, "res-blocks per level", "[ddpm, code]", range="[1, inf)")
    attention_resolutions: tuple[int, ...] = hp(
        (16,), "pixels", "[ddpm]", "levels with self-attention", range="[1, inf)"
    )
    mid_attention: bool = hp(True, "", "[ddpm]", "attention in the bottleneck block")
    dropout: float = hp(
        0.1, "probability", "[ddpm]; [code] 0.15", "train-time dropout", range="[0, 1)"
    )
    norm_num_groups: int = hp(
        32, "GroupNorm groups", "", "must divide every channel count", range="[1, inf)"
    )
    # -- noise schedule --
    beta_schedule: str = hp(
        "cosine", "linear | cosine (squaredcos_cap_v2)", "[paper]; [code] linear"
    )
    num_train_timesteps: int = hp(1000, "timesteps", "[paper, code]", "T", range="[1, inf)")
    beta_start: float = hp(1e-4, "beta", "[code]", "first beta (linear schedule)", range="(0, 1)")
    beta_end: float = hp(0.02, "beta", "[code]", "last beta (linear schedule)", range="(0, 1)")
    t_max: int | None = hp(
        None, "timesteps", "[open]", "timesteps sampled from [0, t_max); None = T", range="[1, inf)"
    )
    continuous_time: bool = hp(False, "", "[open]", "fractional levels in (0, t_max]: any schedule")
    # -- optimisation --
    steps: int = hp(
        125_000, "optimiser steps", "[code] 200 epochs x 625 batches of 80", range="[0, inf)"
    )
    batch_size: int = hp(80, "images per step", "[code]", range="[1, inf)")
    lr: float = hp(
        1e-4, "learning rate", "[paper, code]", "AdamW peak learning rate", range="(0, inf)"
    )
    weight_decay: float = hp(1e-4, "factor", "[code]", "AdamW weight decay", range="[0, inf)")
    warmup_steps: int = hp(
        12_500,
        "steps",
        "[code: 10% of training]",
        "linear warm-up, then cosine to 0",
        range="[0, inf)",
    )
    grad_clip: float = hp(
        1.0, "L2 norm", "[code]", "max gradient L2 norm; 0 = no clipping", range="[0, inf)"
    )
    ema_decay: float = hp(
        0.9999,
        "factor",
        "[ddpm]",
        "EMA of weights, saved as the model; 0 = no EMA",
        range="[0, 1)",
    )
    flip: bool = hp(True, "", "[code]", "random horizontal flip")
    amp: bool = hp(True, "", "[open]", "bf16 autocast on CUDA (never on CPU)")
    # -- bookkeeping --
    log_every: int = hp(100, "steps", help="steps per loss-log entry", range="[1, inf)")
    checkpoint_every: int = hp(
        2_000, "steps", help="steps between checkpoints (and at the end)", range="[1, inf)"
    )
    max_minutes: float = hp(
        0.0, "minutes", help="stop (and save) after this wall time; 0 = no limit", range="[0, inf)"
    )
    resume: bool = hp(True, help="continue from out_dir/train_state.pt when it exists")
    init_from: str | None = hp(
        None, "path or hub id", "[open]", "start from this diffusers model's weights (same network)"
    )
    seed: int = hp(0, "seed", help="init, batches, timesteps and noise")
    progress: bool = hp(True, help="progress bar")

    PRESETS: typing.ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {
            "block_out_channels": (16, 32),
            "layers_per_block": 1,
            "attention_resolutions": (),
            "mid_attention": False,
            "dropout": 0.0,
            "norm_num_groups": 8,
            "t_max": 120,
            "steps": 8,
            "batch_size": 16,
            "warmup_steps": 2,
            "ema_decay": 0.9,
            "log_every": 2,
            "checkpoint_every": 1000,
        },
        "quick": {
            # CALIBRATION.md: (32, 64, 128), 1 layer, no attention: 2.5M params, 103 img/s
            "block_out_channels": (32, 64, 128),
            "layers_per_block": 1,
            "attention_resolutions": (),
            "mid_attention": False,
            "dropout": 0.0,
            "t_max": 120,
            "steps": 5_000,
            "batch_size": 64,
            "lr": 2e-4,  # [ddpm] CIFAR-10 value: a short training needs the larger step
            "warmup_steps": 250,
            "ema_decay": 0.999,
            "log_every": 50,
            "checkpoint_every": 500,
        },
        "gpu": {
            # what one lent GPU trains in minutes (benchmarks/gpu/): 14.7M parameters
            # (fp16 weights 29.5 MB), continuous levels (0, 150] of the linear schedule,
            # so one model serves the paper's cosine and the code's linear chains
            "block_out_channels": (64, 128, 256),
            "layers_per_block": 2,
            "attention_resolutions": (16,),
            "mid_attention": True,
            "dropout": 0.0,
            "beta_schedule": "linear",
            "t_max": 150,
            "continuous_time": True,
            "steps": 6_000,
            "batch_size": 256,
            "lr": 3e-4,
            "warmup_steps": 200,
            "ema_decay": 0.999,
            "log_every": 50,
            "checkpoint_every": 1_000,
        },
        "paper": {},
    }
    PRESETS["cpu"] = PRESETS["quick"]

    def validate(self) -> None:
        """Checks across fields and the schedule name (each field's range: ``hp``)."""
        from detox.diffusion.backend import normalize_schedule

        normalize_schedule(self.beta_schedule)  # names and aliases, case-insensitive
        if self.t_max is not None and self.t_max > self.num_train_timesteps:
            raise ConfigError(
                f"t_max={self.t_max}: expected 1 <= t_max <= num_train_timesteps "
                f"({self.num_train_timesteps})"
            )

    @property
    def effective_t_max(self) -> int:
        return int(self.t_max or self.num_train_timesteps)

    def architecture(self) -> dict[str, Any]:
        """The settings that define the network (must match to resume a checkpoint)."""
        keys = (
            "block_out_channels",
            "layers_per_block",
            "attention_resolutions",
            "mid_attention",
            "norm_num_groups",
            "beta_schedule",
            "num_train_timesteps",
            "beta_start",
            "beta_end",
            "continuous_time",
        )
        return {k: getattr(self, k) for k in keys}


def make_train_config(preset: str | None = None, **overrides: Any) -> DiffusionTrainConfig:
    """``DiffusionTrainConfig`` from a preset (``smoke``, ``quick``/``cpu``, ``paper``)."""
    return make_config(DiffusionTrainConfig, preset, **overrides)
