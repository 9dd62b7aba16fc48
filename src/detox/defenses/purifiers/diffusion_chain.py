"""What every diffusion purifier shares: the diffusion model, the schedule its reverse
chains walk, and one batched reverse step.

SampDetox, ZIP and Sancdifi all noise an image (whole or in part) and run a DDPM/DDIM
reverse chain back to level 0 with a diffusion model of the images; they differ in where
and how far they noise and in what they do between steps. This module holds the common
part once:

* :class:`DiffusionSettings`: the settings every such purifier has (which model, which
  schedule the noise levels refer to, the reverse step's variance and sampler, stride,
  bf16 / ``torch.compile`` on CUDA, batching, seed). A method's config subclasses it and
  redeclares a field only where the method's sources give it another default.
* :class:`DiffusionPurifier`: the model (``diffusion`` setting, or the one detox ships for
  the dataset: :meth:`use_dataset_defaults`), checked against the highest noise level the
  method needs (:meth:`_top_level`), the per-level ``abar`` of the chains
  (:meth:`_chain_schedule`), the network call (:meth:`_eps`), the predicted clean image
  (:meth:`_x0`) and one reverse step (:meth:`_step`), with the weights in the cache key.

**Levels and timesteps.** Level ``k`` means ``k`` forward diffusion steps:
``abar_levels[k] = prod_{s < k} (1 - beta_s)`` (level 0 = clean). The reverse step from
level ``k`` evaluates the UNet at (0-based) timestep ``k - 1``. A *continuous-time* model
(trained on fractional levels, see :mod:`detox.diffusion.presets`; the models detox ships
are) runs the chains on the schedule the settings name, evaluated at the fractional
timestep of its own schedule with the same noise amount
(:meth:`~detox.diffusion.DiffusionModel.timesteps_for`), and settings noisier than its
trained range are refused. Any other model only makes sense with the schedule it was
trained with, so the chains use its own betas (with a warning in ``purifier.warnings``
when the settings name another; ``beta_schedule = "any"`` always uses the model's).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from abc import abstractmethod
from typing import Any

import torch

from detox.config import hp
from detox.defenses.purifiers.base import NoiseStreams, Purifier
from detox.errors import ConfigError

VARIANCES = ("fixed_small", "fixed_large")
SAMPLERS = ("ddpm", "ddim")


@dataclasses.dataclass
class DiffusionSettings:
    """Settings shared by the diffusion purifiers. Noise levels are in diffusion steps
    (of T = 1000)."""

    diffusion: str | None = hp(
        None, "path or hub id", help="diffusion model: folder (diffusers format) or hub id"
    )
    beta_schedule: str = hp(
        "linear",
        "schedule name | any",
        "[open] the DDPM schedule",
        "the schedule the noise levels refer to; any = the model's own",
    )
    variance: str = hp(
        "fixed_small",
        "fixed_small | fixed_large",
        "[open] DDPM posterior",
        "reverse-step variance",
        choices=VARIANCES,
    )
    clip_denoised: bool = hp(
        True, "", "[open] diffusers' default", "clip predicted x0 to [-1, 1] in each step"
    )
    noise_offset: int = hp(
        0, "levels", "[open]", "extra forward levels when noising", choices=(0, 1)
    )
    stride: int = hp(
        1,
        "levels per reverse step",
        "[open, beyond the papers]",
        "1 = every level",
        range="[1, inf)",
    )
    sampler: str = hp(
        "ddpm",
        "ddpm | ddim",
        "[open]",
        "reverse step: ddpm (ancestral) | ddim (deterministic)",
        choices=SAMPLERS,
    )
    batch_size: int = hp(128, "images per chunk", range="[1, inf)")
    seed: int = hp(0, "seed", help="noise seed (per image: derived from seed and position)")
    amp: bool = hp(False, "", "[open]", "bf16 autocast of the UNet on CUDA")
    compile: bool = hp(
        False, "", "[open]", "torch.compile the UNet on CUDA (~20 s once; 2.9x on an H200)"
    )

    def validate(self) -> None:
        """What no declared range says (each field's range and choices: ``hp``)."""
        if self.beta_schedule != "any":  # names and aliases, case-insensitive
            from detox.diffusion.backend import normalize_schedule

            normalize_schedule(self.beta_schedule)


def level_grid(top: int, stride: int) -> list[int]:
    """Descending noise levels ``top, ..., 0`` spaced about ``stride`` apart (evenly).

    ``stride = 1`` gives every level; ``top = 0`` gives ``[0]`` (nothing to do).
    """
    if top <= 0:
        return [0]
    n = math.ceil(top / stride)
    return sorted({round(top * k / n) for k in range(n + 1)}, reverse=True)


class DiffusionPurifier(Purifier):
    """Base of the purifiers that run reverse diffusion chains. Subclasses implement
    :meth:`_top_level` (the noisiest level they use) and :meth:`_purify_batch`."""

    def __init__(self, config: Any | None = None, model: Any = None) -> None:
        super().__init__(config)
        self._model = None
        self._net = None  # torch.compile-d UNet (config.compile on CUDA)
        self._size_warned = False
        if model is not None:
            self.set_model(model)

    @abstractmethod
    def _top_level(self) -> int:
        """The noisiest level (of the settings' schedule) the method's chains start from,
        not counting ``noise_offset``."""

    # -- model -----------------------------------------------------------------------------
    @property
    def model(self):
        if self._model is None:
            from detox.diffusion.backend import load_diffusion, packaged_datasets

            if not self.config.diffusion:
                raise ConfigError(
                    f"{self.name} needs a diffusion model: set diffusion=PATH (a "
                    "diffusers-format folder, e.g. one written by `detox diffusion train`) or "
                    f"pass model=; detox ships models for "
                    f"{', '.join(packaged_datasets()) or 'no dataset'} only"
                )

            self.set_model(load_diffusion(self.config.diffusion, device=self.device))
        return self._model

    def use_dataset_defaults(self, dataset: str | None) -> DiffusionPurifier:
        """Without ``diffusion`` set, use the model shipped for ``dataset`` (if any)."""
        if self._model is None and not self.config.diffusion:
            from detox.diffusion import packaged_diffusion

            self.config.diffusion = packaged_diffusion(dataset)
        return self

    def set_model(self, model: Any) -> DiffusionPurifier:
        """Use ``model`` (a :class:`~detox.diffusion.DiffusionModel`); checks it fits.

        The first model set decides the purifier's device (``.to()`` changes both)."""
        cfg = self.config
        top = self._top_level()
        if top + cfg.noise_offset > model.num_train_timesteps:
            raise ConfigError(
                f"{self.name}: noise level {top + cfg.noise_offset} exceeds the model's "
                f"T = {model.num_train_timesteps}"
            )
        abar, timesteps = self._chain_schedule(model, top)
        if self._model is None and model.device != self.device:
            self.device = model.device  # a model given ready on a device: run there
        self._model = model.to(self.device)
        self._abar = abar  # float64, CPU, index = level
        self._timesteps = timesteps  # network timestep per level (None: level - 1)
        self._net = None  # the compiled UNet (cfg.compile), made at the first CUDA call
        return self

    def _chain_schedule(self, model: Any, top: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The chains' ``abar`` per level and the network timestep of each level.

        A ``continuous_time`` model runs the chains on the schedule the settings name;
        any other model runs them on its own schedule (module docstring)."""
        cfg = self.config
        if model.continuous_time and cfg.beta_schedule != "any":
            from detox.diffusion.backend import make_scheduler

            sched = make_scheduler(cfg.beta_schedule, model.num_train_timesteps)
            betas = torch.as_tensor(sched.betas).to("cpu", torch.float64)
            abar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1.0 - betas, 0)])
            if float(abar[top]) < model.min_abar * (1.0 - 1e-9):
                raise ConfigError(
                    f"{self.name}: level {top} of the {cfg.beta_schedule!r} schedule "
                    f"(abar {float(abar[top]):.4f}) is noisier than the diffusion model "
                    f"{model.source!r} was trained on (abar >= {model.min_abar:.4f}); lower "
                    "the noise levels"
                )
            return abar, model.timesteps_for(abar[: top + 1]).float()
        if top > model.t_max:
            raise ConfigError(
                f"{self.name}: noise level {top} but the diffusion model {model.source!r} was "
                f"trained on timesteps [0, {model.t_max}) only; lower the noise levels or "
                f"train with t_max >= {top}"
            )
        if cfg.beta_schedule != "any":
            from detox.diffusion.backend import normalize_schedule

            want = normalize_schedule(cfg.beta_schedule)
            if model.beta_schedule != want:
                msg = (
                    f"{self.name}: the settings expect the {want!r} beta schedule but the "
                    f"diffusion model uses {model.beta_schedule!r}; using the model's schedule "
                    "(the noise levels then mean different noise amounts)"
                )
                self.warnings.append(msg)
                warnings.warn(msg, stacklevel=3)
        return model.abar_levels, None

    def to(self, device: str | torch.device) -> DiffusionPurifier:
        super().to(device)
        if self._model is not None:
            self._model.to(self.device)
        return self

    def _fingerprint_extra(self) -> bytes:
        """The diffusion model: scheduler settings and UNet weights."""
        from detox.utils.fingerprint import state_fingerprint

        m = self.model
        sched = repr(sorted(m.scheduler.config.items()))
        return f"{sched}|{state_fingerprint(m.unet)}".encode()

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if self._model is not None:
            d["diffusion"] = self._model.describe()
        return d

    def _check_input(self, x: torch.Tensor) -> None:
        """Channels must match the model; another image size works but is warned about."""
        model = self.model
        _, c, h, w = x.shape
        if c != model.in_channels:
            raise ConfigError(
                f"{self.name}: images have {c} channels, the diffusion model expects "
                f"{model.in_channels}"
            )
        if model.sample_size and model.sample_size != h and not self._size_warned:
            msg = (
                f"{self.name}: images are {h}x{w}, the diffusion model was built for "
                f"{model.sample_size}x{model.sample_size}"
            )
            self.warnings.append(msg)
            warnings.warn(msg, stacklevel=4)
            self._size_warned = True

    # -- chains ----------------------------------------------------------------------------
    def _eps(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """The network's noise prediction for ``x`` at ``level`` (all images alike)."""
        if self._timesteps is None:
            t = torch.full((x.shape[0],), level - 1, dtype=torch.long, device=x.device)
        else:
            t = torch.full((x.shape[0],), float(self._timesteps[level]), device=x.device)
        use_amp = self.config.amp and x.device.type == "cuda"
        if self.config.compile and x.device.type == "cuda" and self._net is None:
            self._net = torch.compile(self.model.unet)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_amp):
            return self.model.eps(x, t, net=self._net).float()

    def _x0(self, x: torch.Tensor, level: int, eps: torch.Tensor) -> torch.Tensor:
        """The clean image the network predicts from ``x`` at ``level`` (clipped to
        [-1, 1] when ``clip_denoised``)."""
        ab = float(self._abar[level])
        x0 = (x - math.sqrt(1.0 - ab) * eps) / math.sqrt(ab)
        return x0.clamp(-1.0, 1.0) if self.config.clip_denoised else x0

    def _noise_to(self, x0: torch.Tensor, level: int, eps: torch.Tensor) -> torch.Tensor:
        """``x0`` forward-noised to ``level`` with the given noise."""
        ab = float(self._abar[level])
        return math.sqrt(ab) * x0 + math.sqrt(1.0 - ab) * eps

    def _move(
        self,
        x: torch.Tensor,
        x0: torch.Tensor,
        eps: torch.Tensor,
        a: int,
        b: int,
        noise: NoiseStreams,
    ) -> torch.Tensor:
        """From level ``a`` to ``b < a`` given the predicted ``x0`` (and ``eps``): the
        DDPM posterior mean plus noise (``sampler = "ddpm"``, respaced when a - b > 1) or
        the deterministic DDIM step. Methods that change ``x0`` between the prediction and
        the step (ZIP's range-null-space projection) call this directly."""
        cfg = self.config
        ab_a, ab_b = float(self._abar[a]), float(self._abar[b])
        if cfg.sampler == "ddim":
            return math.sqrt(ab_b) * x0 + math.sqrt(1.0 - ab_b) * eps
        alpha = ab_a / ab_b
        beta = 1.0 - alpha
        c0 = math.sqrt(ab_b) * beta / (1.0 - ab_a)
        ct = math.sqrt(alpha) * (1.0 - ab_b) / (1.0 - ab_a)
        new = c0 * x0 + ct * x
        if b > 0:
            var = beta * (1.0 - ab_b) / (1.0 - ab_a) if cfg.variance == "fixed_small" else beta
            new = new + math.sqrt(var) * noise.randn()
        return new

    def _step(
        self,
        x: torch.Tensor,
        a: int,
        b: int,
        noise: NoiseStreams,
        active: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One reverse step from level ``a`` to level ``b < a`` (respaced when a - b > 1);
        with ``active`` (bool, broadcastable) only those pixels take the new value."""
        eps = self._eps(x, a)
        new = self._move(x, self._x0(x, a, eps), eps, a, b, noise)
        if active is not None:
            new = torch.where(active, new, x)
        return new
