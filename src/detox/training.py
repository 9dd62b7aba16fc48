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

from detox.config import ConfigError
from detox.data.base import to_float
from detox.errors import DivergedError
from detox.utils.device import autocast, resolve_device

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "step", "constant")


@dataclasses.dataclass
class TrainConfig:
    """Training hyper-parameters. Defaults are the BackdoorBench/SampDetox victim setting
    (METHODS.md section 4: PreAct-ResNet18, SGD 0.01, momentum 0.9, wd 5e-4, cosine, 100
    epochs, batch 128); the ``quick`` preset is the CPU recipe of CALIBRATION.md."""

    model: str = "preact-resnet18"  # registered model name
    width: float = 1.0  # channel multiplier (0.25 = 16 base channels)
    epochs: int = 100  # epochs trained
    schedule_epochs: int | None = None  # epochs the LR schedule spans; None = epochs
    batch_size: int = 128  # images per step
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01  # peak learning rate
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # SGD Nesterov momentum
    weight_decay: float = 5e-4  # L2 / decoupled weight decay
    schedule: str = "cosine"  # onecycle | cosine | step | constant
    warmup_epochs: float = 0.0  # linear warm-up (cosine/step), epochs
    onecycle_pct: float = 0.25  # fraction of the schedule rising to the peak (onecycle)
    step_milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of the schedule (step)
    step_gamma: float = 0.1  # LR factor at each milestone (step)
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    augment: bool = True  # random crop + flip
    crop_padding: int = 4  # pixels of padding for the random crop
    pad_mode: str = "reflect"  # reflect | constant (zero) padding for the crop
    flip: bool = True  # random horizontal flip
    amp: bool = True  # bf16 autocast on CUDA and on CPUs with bf16 units (AVX-512 BF16/AMX)
    channels_last: bool = True  # memory format
    eval_batch_size: int = 512  # images per inference batch
    seed: int = 0  # model init, shuffling and augmentation
    progress: bool = True  # show progress bars

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
        "quick": {
            # CALIBRATION.md recipe (ResNet-18 width 16, one-cycle to 0.2, 10 epochs -> 87.3%),
            # shortened to 9 epochs to stay inside 12 minutes on a 2-core CPU
            "model": "resnet18",
            "width": 0.25,
            "epochs": 9,
            "batch_size": 256,
            "lr": 0.2,
            "nesterov": True,
            "schedule": "onecycle",
            "label_smoothing": 0.1,
        },
        "paper": {},
    }

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r}: expected one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule {self.schedule!r}: expected one of {SCHEDULES}")
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("epochs must be >= 0, batch_size >= 1 and lr > 0")
        if self.pad_mode not in ("reflect", "constant"):
            raise ConfigError(f"pad_mode {self.pad_mode!r}: expected reflect or constant")
        if self.schedule_epochs is not None and self.schedule_epochs < self.epochs:
            raise ConfigError("schedule_epochs must be >= epochs")


class TrainCallback(typing.Protocol):
    """Optional hooks; implement any subset."""

    def on_batch_losses(self, epoch: int, index: torch.Tensor, losses: torch.Tensor) -> None: ...

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None: ...


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
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0 if cfg.optimizer == "adamw" else cfg.weight_decay},
    ]
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
    Returns the model (on ``device``), the per-epoch history and the wall time.
    """
    dev = resolve_device(device)
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
    torch.manual_seed(cfg.seed)
    model = model.to(dev)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg)
    n = len(x)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * (cfg.schedule_epochs or cfg.epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(cfg, s, total, steps_per_epoch)
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    x_dev, y_dev = x.to(dev), y.to(dev)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    seen = 0
    for epoch in range(cfg.epochs):
        model.train()
        te = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        tot_loss, tot_correct = 0.0, 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}",
            disable=not cfg.progress,
            leave=False,
            unit="batch",
        )
        for i in bar:
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            idx_dev = idx.to(dev)
            xb = to_float(x_dev[idx_dev])
            yb = y_dev[idx_dev]
            if cfg.augment:
                xb = random_crop_flip(xb, cfg.crop_padding, cfg.flip, gen, cfg.pad_mode)
            if cfg.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast(dev, cfg.amp):
                logits = model(xb)
            losses = F.cross_entropy(
                logits.float(), yb, reduction="none", label_smoothing=cfg.label_smoothing
            )
            loss = losses.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for cb in callbacks:
                hook = getattr(cb, "on_batch_losses", None)
                if hook is not None:
                    hook(epoch, idx, losses.detach())
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise DivergedError(
                    f"{desc}: the loss became {lv} at epoch {epoch + 1}, batch {i + 1} "
                    f"(lr {cfg.lr:g}, {cfg.optimizer}); lower the learning rate. "
                    "Nothing of this training was saved"
                )
            tot_loss += lv * len(idx)
            tot_correct += int((logits.argmax(1) == yb).sum())
            seen += len(idx)
            if i % 10 == 0:
                bar.set_postfix(
                    loss=f"{float(loss.detach()):.3f}", lr=f"{sched.get_last_lr()[0]:.3g}"
                )
        rec = {
            "epoch": epoch + 1,
            "loss": tot_loss / n,
            "train_acc": tot_correct / n,
            "lr": sched.get_last_lr()[0],
            "seconds": time.perf_counter() - te,
        }
        if eval_data is not None:
            rec["test_acc"] = accuracy(model, *eval_data, batch_size=cfg.eval_batch_size)
        for cb in callbacks:
            hook = getattr(cb, "on_epoch_end", None)
            if hook is not None:
                hook(epoch, model)
        history.append(rec)
        _log(
            f"{desc} epoch {epoch + 1}/{cfg.epochs} loss {rec['loss']:.4f} "
            f"train_acc {rec['train_acc']:.4f}"
            + (f" test_acc {rec['test_acc']:.4f}" if "test_acc" in rec else "")
            + f" ({rec['seconds']:.1f}s)",
            cfg.progress,
        )
    secs = time.perf_counter() - t0
    model.eval()
    if cfg.channels_last:
        # hand the model back in the layout a loaded checkpoint has: a model fresh from
        # training and the same weights from the victim cache then compute the same bytes
        # (convolutions in another memory format round differently, ~1e-7)
        model = model.to(memory_format=torch.contiguous_format)
    return TrainResult(model, history, secs, seen / max(secs, 1e-9))


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
) -> torch.Tensor:
    """Logits (float32, on CPU) for uint8 or float images, batched, in eval mode.

    ``amp`` uses bf16 autocast where supported (as in training); pass ``amp=False`` where
    exact float32 logits matter (e.g. score differences of nearly identical inputs)."""
    if isinstance(model, nn.Module):
        model.eval()
        dev = next(model.parameters()).device if device is None else resolve_device(device)
    else:
        dev = resolve_device(device or "cpu")
    outs = []
    for i in tqdm(range(0, len(x), batch_size), disable=not progress, desc="predict", leave=False):
        xb = to_float(x[i : i + batch_size], dev)
        with autocast(dev, amp):
            outs.append(model(xb).float().cpu())
    if not outs:
        return torch.empty(0)
    return torch.cat(outs)


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
