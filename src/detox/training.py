"""One training loop for every classifier, and batched inference helpers.

* SGD (optionally Nesterov) or AdamW; one-cycle, cosine, step or constant LR schedules,
  stepped per batch; the schedule may span more epochs than are trained
  (``schedule_epochs``: BaDLoss pre-trains 30 epochs on the final run's schedule).
* Augmentation as batched tensor ops on the device: random crop with 4-pixel padding and
  horizontal flip, random numbers from a seeded generator.
* bf16 autocast and channels_last on CUDA; seeded and reproducible on CPU.
* Callbacks: ``on_batch_losses(epoch, index, losses)`` receives every example's training
  loss (train mode, augmented; ABL-style defenses) and ``on_epoch_end(epoch, model)`` runs
  after each epoch (BaDLoss records eval-mode losses of every example there).
"""

from __future__ import annotations

import dataclasses
import math
import time
import typing
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from detox.config import ConfigError, hp
from detox.data.base import to_float
from detox.errors import DivergedError
from detox.utils.device import autocast, resolve_device

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "step", "constant", "triangle")


#: airbench94's recipe (Jordan 2024, arXiv 2404.00498) in this trainer's terms, for
#: :class:`~detox.models.airnet.AirNet`. airbench sums the loss over the batch and states its
#: learning rate and weight decay per 1024 examples, decoupled from momentum (lr 11.5, wd
#: 0.0153, momentum 0.85): for the mean loss used here that is lr = 11.5 / (1 + 1 / 0.15) =
#: 1.5 and a per-step decay of 0.0153 x 1024 / 7850.67 = 0.0019957, i.e. weight_decay =
#: 0.0019957 / 1.5 = 0.0013305 (SGD multiplies it by the lr).
AIRBENCH: dict[str, Any] = {
    "model": "airnet",
    "width": 1.0,
    "epochs": 9.9,
    "batch_size": 1024,
    "drop_last": True,
    "optimizer": "sgd",
    "lr": 1.5,
    "momentum": 0.85,
    "nesterov": True,
    "weight_decay": 0.0153 * 1024 / (1024 * (1 + 1 / 0.15)) / 1.5,
    "norm_bias_lr_scale": 64.0,
    "label_smoothing": 0.2,
    "schedule": "triangle",
    "triangle": (0.2, 0.23, 0.07),
    "augment": True,
    "crop_padding": 2,
    "pad_mode": "reflect",
    "flip": True,
    "alternate_flip": True,
    "lookahead": True,
    "whiten_bias_epochs": 3,
}


#: The ``quick`` recipe before AirNet (CALIBRATION.md: ResNet-18 width 16, one-cycle to
#: 0.2, label smoothing 0.1; 10 epochs -> 87.3%, shortened to 9), kept for comparison
#: (``benchmarks/train_speed.py --compare detox-resnet18:9``) and for the tables measured
#: with it (``--set`` these values to reproduce them).
QUICK_RESNET18: dict[str, Any] = {
    "model": "resnet18",
    "width": 0.25,
    "epochs": 9,
    "batch_size": 256,
    "lr": 0.2,
    "nesterov": True,
    "schedule": "onecycle",
    "label_smoothing": 0.1,
}


@dataclasses.dataclass
class TrainConfig:
    """Training hyper-parameters. Defaults are the BackdoorBench/SampDetox victim setting
    (METHODS.md section 4: PreAct-ResNet18, SGD 0.01, momentum 0.9, wd 5e-4, cosine, 100
    epochs, batch 128); the ``quick`` preset is the CPU recipe of CALIBRATION.md."""

    model: str = hp("preact-resnet18", "model name", help="registered model name")
    width: float = hp(1.0, "channel multiplier", help="0.25 = 16 base channels", range="(0, inf)")
    epochs: float = hp(
        100, "epochs", help="epochs trained; a fraction stops inside the last", range="[0, inf)"
    )
    schedule_epochs: float | None = hp(
        None, "epochs", help="epochs the LR schedule spans; None = epochs", range="[0, inf)"
    )
    batch_size: int = hp(128, "images per step", range="[1, inf)")
    optimizer: str = hp("sgd", "sgd | adamw", choices=OPTIMIZERS)
    lr: float = hp(0.01, "learning rate", help="peak learning rate", range="(0, inf)")
    momentum: float = hp(0.9, "factor", help="SGD momentum", range="[0, 1]")
    nesterov: bool = hp(False, help="SGD Nesterov momentum")
    weight_decay: float = hp(5e-4, "factor", help="L2 / decoupled weight decay", range="[0, inf)")
    schedule: str = hp(
        "cosine", "onecycle | cosine | step | constant | triangle", choices=SCHEDULES
    )
    triangle: tuple[float, ...] = hp(
        (0.2, 0.23, 0.07),
        "(start factor, peak position, end factor)",
        "[airbench]",
        help="triangle: LR factor rising linearly from start to 1 at the peak (a fraction "
        "of the steps), then falling linearly to end",
        range="[0, inf)",
    )
    norm_bias_lr_scale: float = hp(
        1.0,
        "factor",
        "[airbench: 64]",
        help="BatchNorm biases train at lr x this, with weight decay / this (the same "
        "decay per step)",
        range="(0, inf)",
    )
    warmup_epochs: float = hp(0.0, "epochs", help="linear warm-up (cosine/step)", range="[0, inf)")
    onecycle_pct: float = hp(
        0.25,
        "fraction of the schedule",
        help="fraction of the schedule rising to the peak (onecycle)",
        range="[0, 1]",
    )
    step_milestones: tuple[float, ...] = hp(
        (0.5, 0.75), "fractions of the schedule", help="LR steps (step)", range="[0, 1]"
    )
    step_gamma: float = hp(
        0.1, "factor", help="LR factor at each milestone (step)", range="(0, inf)"
    )
    label_smoothing: float = hp(
        0.0, "fraction", help="cross-entropy label smoothing", range="[0, 1]"
    )
    augment: bool = hp(True, help="random crop + flip")
    crop_padding: int = hp(4, "pixels", help="padding for the random crop", range="[0, inf)")
    pad_mode: str = hp(
        "reflect",
        "reflect | constant",
        help="padding for the crop (constant: zero)",
        choices=("reflect", "constant"),
    )
    flip: bool = hp(True, help="random horizontal flip")
    alternate_flip: bool = hp(
        False,
        source="[airbench]",
        help="flip each image at random in the first epoch, then the opposite way every "
        "other epoch (with flip)",
    )
    drop_last: bool = hp(False, help="drop the last, incomplete batch of each epoch")
    lookahead: bool = hp(
        False,
        source="[airbench]",
        help="every lookahead_every steps, average the weights into an EMA and copy it back "
        "(decay lookahead_decay x (step / total)^3); the EMA is the final model",
    )
    lookahead_every: int = hp(5, "steps", "[airbench]", range="[1, inf)")
    lookahead_decay: float = hp(0.95**5, "factor", "[airbench: 0.95^5]", range="[0, 1]")
    whiten_bias_epochs: int | None = hp(
        None,
        "epochs",
        "[airbench: 3]",
        help="train a whitening layer's bias (AirNet) for this many epochs; None: always",
        range="[0, inf)",
    )
    data_init_images: int = hp(
        5000,
        "images",
        "[airbench]",
        help="training images a model initialised from data (AirNet's whitening) sees; "
        "0: keep the model's weights (fine-tuning a trained model)",
        range="[0, inf)",
    )
    amp: bool = hp(
        True, help="bf16 autocast on CUDA and on CPUs with bf16 units (AVX-512 BF16/AMX)"
    )
    channels_last: bool = hp(True, help="channels_last memory format")
    eval_batch_size: int = hp(512, "images per inference batch", range="[1, inf)")
    seed: int = hp(0, "seed", help="model init, shuffling and augmentation")
    progress: bool = hp(True, help="show progress bars")

    PRESETS: typing.ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {
            "model": "small-cnn",
            "width": 0.5,
            "epochs": 2,
            "batch_size": 64,
            "lr": 0.05,
            "schedule": "onecycle",
            "nesterov": True,
        },
        # airbench's recipe (AirNet, AIRBENCH) for 5 epochs: see docs/results.md, "Victims
        # that learn in minutes"
        "quick": {**AIRBENCH, "epochs": 5},
        "paper": {},
    }

    def validate(self) -> None:
        """Checks across fields (each field's range and choices: :func:`check_fields`)."""
        if len(self.triangle) != 3 or not 0 < self.triangle[1] < 1:
            raise ConfigError(
                f"triangle={self.triangle}: expected (start factor, peak position in (0, 1), "
                "end factor)"
            )
        if self.schedule_epochs is not None and self.schedule_epochs < self.epochs:
            raise ConfigError(
                f"schedule_epochs={self.schedule_epochs}: expected >= epochs ({self.epochs})"
            )


@dataclasses.dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, float]]
    seconds: float
    images_per_second: float


# ---------------------------------------------------------------------------------------
# augmentation


def random_crop_flip(
    x: torch.Tensor,
    padding: int,
    flip: bool,
    generator: torch.Generator,
    pad_mode: str = "reflect",
) -> torch.Tensor:
    """Batched random crop (after ``padding`` pixels of padding) and horizontal flip.

    Random offsets come from ``generator`` (CPU), so results are reproducible on any device.
    """
    b, c, h, w = x.shape
    if padding > 0:
        xp = F.pad(x, (padding,) * 4, mode=pad_mode)
        off = torch.randint(0, 2 * padding + 1, (2, b), generator=generator).to(x.device)
        rows = off[0, :, None] + torch.arange(h, device=x.device)  # B,H
        cols = off[1, :, None] + torch.arange(w, device=x.device)  # B,W
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        ci = torch.arange(c, device=x.device)[None, :, None, None]
        x = xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        m = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        x = torch.where(m[:, None, None, None], x.flip(3), x)
    return x


# ---------------------------------------------------------------------------------------
# optimiser and schedule


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov optional) or AdamW; no weight decay on 1-d parameters under AdamW;
    BatchNorm biases in a group of their own when ``norm_bias_lr_scale`` is not 1."""
    norm_bias: set[int] = set()
    if cfg.norm_bias_lr_scale != 1.0:
        norm_bias = {
            id(m.bias)
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None
        }
    decay, no_decay, scaled_bias = [], [], []
    for p in model.parameters():
        if p.requires_grad:
            if id(p) in norm_bias:
                scaled_bias.append(p)
            else:
                (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0 if cfg.optimizer == "adamw" else cfg.weight_decay},
    ]
    if scaled_bias:
        k = cfg.norm_bias_lr_scale
        wd = 0.0 if cfg.optimizer == "adamw" else cfg.weight_decay / k
        groups.append({"params": scaled_bias, "lr": cfg.lr * k, "weight_decay": wd})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    """LR multiplier at optimisation ``step`` of a schedule of ``total`` steps."""
    t = min(step, total) / max(1, total)
    if cfg.schedule == "onecycle":
        # linear warm-up from lr/25 to lr, then cosine annealing to lr/1e4 (OneCycleLR-like)
        p = cfg.onecycle_pct
        if t < p:
            return 1 / 25 + (1 - 1 / 25) * t / p
        u = (t - p) / max(1e-12, 1 - p)
        return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * u))
    if cfg.schedule == "triangle":
        start, peak, end = cfg.triangle
        if t < peak:
            return start + (1 - start) * t / max(peak, 1e-12)
        return 1 + (end - 1) * (t - peak) / max(1 - peak, 1e-12)
    warm = cfg.warmup_epochs * steps_per_epoch
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "step":
        return cfg.step_gamma ** sum(t >= m for m in cfg.step_milestones)
    return 1.0


# ---------------------------------------------------------------------------------------
# training


class TrainHook:
    """What a training-controlled attack (Input-aware: its trigger generator trains with
    the classifier) or a training-time defense passes to :func:`train` as a callback. Every
    method is optional for :func:`train`; this base class documents them and does nothing.

    * ``on_batch(epoch, idx, xb, yb) -> (xb, yb)``: the augmented float batch and its labels
      (``idx``: the examples' positions in the training set) before the forward pass; it
      may replace images and labels (same batch size), with gradients flowing into the
      hook's own parameters.
    * ``on_loss(epoch, logits, yb, loss) -> loss``: the batch's mean loss, to add terms to.
    * ``on_step(epoch)``: after the classifier's optimiser step (the hook steps its own).
    * ``on_lr(factor)``: before each optimiser step, the classifier's learning rate of
      that step relative to the configured ``lr`` (the schedule's factor), for a hook whose
      own optimiser follows the classifier's schedule.
    * ``state_dict()`` / ``load_state_dict()``: what the hook learned (kept with the victim
      in the cache), and ``fingerprint()``: everything its behaviour depends on (keys the
      victim cache).
    """

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def fingerprint(self) -> str:
        from detox.utils.fingerprint import code_fingerprint

        return f"{type(self).__name__}:{code_fingerprint(type(self))}"


def _log(msg: str, progress: bool) -> None:
    if progress:
        tqdm.write(msg)


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    device: str | torch.device = "auto",
    eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    callbacks: Sequence[Any] = (),
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` on uint8 images ``x`` (N,C,H,W) and labels ``y``.

    ``eval_data`` (uint8 images, labels) is evaluated after each epoch and logged.
    ``callbacks`` are objects with any of these methods (see :class:`TrainHook`):
    ``on_batch`` (shape each batch before the forward pass: a training-controlled attack),
    ``on_loss`` (add to the batch's loss), ``on_step`` (after the optimiser's step),
    ``on_batch_losses`` (per-example losses: BaDLoss, ABL) and ``on_epoch_end``.
    Returns the model (on ``device``), the per-epoch history and the wall time.
    """
    _check_inputs(x, y, cfg)
    loop = _Loop.start(model, x, y, cfg, resolve_device(device), callbacks, desc)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for epoch in range(math.ceil(cfg.epochs)):
        rec = loop.epoch(epoch)
        if eval_data is not None:
            rec["test_acc"] = accuracy(loop.model, *eval_data, batch_size=cfg.eval_batch_size)
        for cb in callbacks:
            hook = getattr(cb, "on_epoch_end", None)
            if hook is not None:
                hook(epoch, loop.model)
        history.append(rec)
        _log(
            f"{desc} epoch {epoch + 1}/{cfg.epochs:g} loss {rec['loss']:.4f} "
            f"train_acc {rec['train_acc']:.4f}"
            + (f" test_acc {rec['test_acc']:.4f}" if "test_acc" in rec else "")
            + f" ({rec['seconds']:.1f}s)",
            cfg.progress,
        )
    loop.finish()
    secs = time.perf_counter() - t0
    model = loop.model.eval()
    if cfg.channels_last:
        # hand the model back in the layout a loaded checkpoint has: a model fresh from
        # training and the same weights from the victim cache then compute the same bytes
        # (convolutions in another memory format round differently, ~1e-7)
        model = model.to(memory_format=torch.contiguous_format)
    return TrainResult(model, history, secs, loop.seen / max(secs, 1e-9))


def _check_inputs(x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> None:
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ConfigError(
            f"train: images must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}"
        )
    if len(x) != len(y) or len(x) == 0:
        raise ConfigError(
            f"train: {len(x)} images and {len(y)} labels; need equal, non-zero counts"
        )
    side = min(int(x.shape[2]), int(x.shape[3]))
    if cfg.augment and cfg.pad_mode == "reflect" and cfg.crop_padding >= side:
        raise ConfigError(
            f"train: images are {x.shape[2]}x{x.shape[3]} pixels, too small for the random "
            f"crop's reflect padding of {cfg.crop_padding}; use larger images, "
            "crop_padding < image size, pad_mode=constant or augment=false"
        )


@dataclasses.dataclass
class _Loop:
    """The state of one :func:`train` run: model, optimiser, schedule, the seeded generator
    (shuffling and augmentation, in a fixed order), data on the device, callbacks."""

    model: nn.Module
    cfg: TrainConfig
    dev: torch.device
    opt: torch.optim.Optimizer
    sched: Any
    gen: torch.Generator
    x: torch.Tensor
    y: torch.Tensor
    steps_per_epoch: int
    total_steps: int
    callbacks: Sequence[Any]
    desc: str
    seen: int = 0
    steps: int = 0
    flip0: torch.Tensor | None = None  # alternate_flip: each image's first-epoch flip
    ema: dict[str, torch.Tensor] | None = None  # lookahead: the averaged weights

    @classmethod
    def start(cls, model, x, y, cfg, dev, callbacks, desc) -> _Loop:
        torch.manual_seed(cfg.seed)
        model = model.to(dev)
        if cfg.data_init_images > 0 and hasattr(
            getattr(model, "backbone", model), "init_from_data"
        ):
            # a model initialised from data (AirNet's patch whitening): the first images
            model.init_from_data(to_float(x[: cfg.data_init_images].to(dev)))
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = build_optimizer(model, cfg)
        n = len(x)
        steps_per_epoch = n // cfg.batch_size if cfg.drop_last else math.ceil(n / cfg.batch_size)
        if steps_per_epoch < 1:
            raise ConfigError(f"train: {n} images make no full batch of {cfg.batch_size}")
        total = math.ceil(steps_per_epoch * (cfg.schedule_epochs or cfg.epochs))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(cfg, s, total, steps_per_epoch)
        )
        gen = torch.Generator().manual_seed(cfg.seed)
        loop = cls(model, cfg, dev, opt, sched, gen, x.to(dev), y.to(dev), steps_per_epoch,
                   math.ceil(steps_per_epoch * cfg.epochs), callbacks, desc)  # fmt: skip
        if cfg.flip and cfg.alternate_flip:
            loop.flip0 = torch.rand(n, generator=gen) < 0.5
        if cfg.lookahead:
            loop.ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return loop

    def _each(self, method: str) -> list[Any]:
        return [getattr(cb, method) for cb in self.callbacks if hasattr(cb, method)]

    def epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the shuffled data; returns the epoch's record."""
        cfg, n = self.cfg, len(self.x)
        if cfg.whiten_bias_epochs is not None and hasattr(
            self.model, "set_whitening_bias_trainable"
        ):
            self.model.set_whitening_bias_trainable(epoch < cfg.whiten_bias_epochs)
        self.model.train()
        te = time.perf_counter()
        perm = torch.randperm(n, generator=self.gen)
        tot_loss, tot_correct = 0.0, 0
        seen0 = self.seen
        bar = tqdm(
            range(self.steps_per_epoch),
            desc=f"{self.desc} epoch {epoch + 1}/{cfg.epochs}",
            disable=not cfg.progress,
            leave=False,
            unit="batch",
        )
        for i in bar:
            if self.steps >= self.total_steps:  # a fractional last epoch
                break
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            loss, correct = self.step(epoch, i, idx)
            tot_loss += loss * len(idx)
            tot_correct += correct
            self.seen += len(idx)
            if i % 10 == 0:
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{self.sched.get_last_lr()[0]:.3g}")
        done = max(1, self.seen - seen0)
        return {
            "epoch": epoch + 1,
            "loss": tot_loss / done,
            "train_acc": tot_correct / done,
            "lr": self.sched.get_last_lr()[0],
            "seconds": time.perf_counter() - te,
        }

    @torch.no_grad()
    def _lookahead(self, decay: float) -> None:
        """Move the EMA towards the weights by (1 - decay) and copy it back."""
        assert self.ema is not None
        for k, v in self.model.state_dict().items():
            if v.is_floating_point():
                self.ema[k].lerp_(v, 1 - decay)
                v.copy_(self.ema[k])

    def finish(self) -> None:
        """With lookahead, the final model is the EMA."""
        if self.ema is not None:
            self._lookahead(1.0)

    def step(self, epoch: int, i: int, idx: torch.Tensor) -> tuple[float, int]:
        """One optimisation step on the examples ``idx``; returns (mean loss, correct)."""
        cfg = self.cfg
        idx_dev = idx.to(self.dev)
        xb = to_float(self.x[idx_dev])
        yb = self.y[idx_dev]
        if cfg.augment:
            flip = cfg.flip and self.flip0 is None
            xb = random_crop_flip(xb, cfg.crop_padding, flip, self.gen, cfg.pad_mode)
            if self.flip0 is not None:
                m = (self.flip0[idx] ^ bool(epoch % 2)).to(self.dev)
                xb = torch.where(m[:, None, None, None], xb.flip(3), xb)
        for on_batch in self._each("on_batch"):
            xb, yb = on_batch(epoch, idx, xb, yb)
            if len(xb) != len(idx) or len(yb) != len(idx):
                raise ConfigError(f"{on_batch.__qualname__} changed the batch size")
        if cfg.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(self.dev, cfg.amp):
            logits = self.model(xb)
        losses = F.cross_entropy(
            logits.float(), yb, reduction="none", label_smoothing=cfg.label_smoothing
        )
        loss = losses.mean()
        for on_loss in self._each("on_loss"):
            loss = on_loss(epoch, logits, yb, loss)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        for on_lr in self._each("on_lr"):  # the schedule's factor of this step
            on_lr(float(self.sched.lr_lambdas[0](self.sched.last_epoch)))
        self.opt.step()
        self.sched.step()
        self.steps += 1
        if self.ema is not None and self.steps % cfg.lookahead_every == 0:
            ramp = (self.steps / self.total_steps) ** 3
            self._lookahead(cfg.lookahead_decay * ramp)
        for cb in self.callbacks:
            if hasattr(cb, "on_step"):
                cb.on_step(epoch)
            if hasattr(cb, "on_batch_losses"):
                cb.on_batch_losses(epoch, idx, losses.detach())
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise DivergedError(
                f"{self.desc}: the loss became {lv} at epoch {epoch + 1}, batch {i + 1} "
                f"(lr {cfg.lr:g}, {cfg.optimizer}); lower the learning rate. "
                "Nothing of this training was saved"
            )
        return lv, int((logits.argmax(1) == yb).sum())


# ---------------------------------------------------------------------------------------
# inference


@torch.inference_mode()
def predict_logits(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    progress: bool = False,
    amp: bool = True,
    tta: int = 0,
) -> torch.Tensor:
    """Logits (float32, on CPU) for uint8 or float images, batched, in eval mode.

    ``amp`` uses bf16 autocast where supported (as in training); pass ``amp=False`` where
    exact float32 logits matter (e.g. score differences of nearly identical inputs).
    ``tta``: test-time augmentation (airbench's levels): 0 none, 1 the mean with the mirror
    image, 2 that averaged with the same at 1-pixel translations (reflect padding). Off
    by default, and off for every attack evaluation: averaging views can hide a trigger."""
    if tta not in (0, 1, 2):
        raise ConfigError(f"tta={tta!r}: expected 0, 1 or 2")
    if isinstance(model, nn.Module):
        model.eval()
        dev = next(model.parameters()).device if device is None else resolve_device(device)
    else:
        dev = resolve_device(device or "cpu")
    outs = []
    for i in tqdm(range(0, len(x), batch_size), disable=not progress, desc="predict", leave=False):
        xb = to_float(x[i : i + batch_size], dev)
        with autocast(dev, amp):
            outs.append(_tta_logits(model, xb, tta).float().cpu())
    if not outs:
        return torch.empty(0)
    return torch.cat(outs)


def _tta_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, level: int):
    if level == 0:
        return model(x)

    def mirror(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * model(v).float() + 0.5 * model(v.flip(-1)).float()

    logits = mirror(x)
    if level == 1:
        return logits
    h, w = x.shape[-2:]
    xp = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = 0.5 * mirror(xp[..., 0:h, 0:w]) + 0.5 * mirror(xp[..., 2 : h + 2, 2 : w + 2])
    return 0.5 * logits + 0.5 * shifted


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted classes (int64, CPU)."""
    return predict_logits(model, x, batch_size).argmax(1)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    if len(x) == 0:
        return float("nan")
    return float((predict(model, x, batch_size) == y.cpu()).float().mean())


@torch.no_grad()
def per_example_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024
) -> torch.Tensor:
    """Cross-entropy of every example (eval mode, no augmentation), float32 on CPU."""
    logits = predict_logits(model, x, batch_size)
    return F.cross_entropy(logits, y.cpu(), reduction="none")
