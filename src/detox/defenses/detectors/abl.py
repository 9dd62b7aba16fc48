"""ABL's backdoor isolation (Li, Lyu, Koren, Lyu, Li, Ma, "Anti-Backdoor Learning:
Training Clean Models on Poisoned Data", NeurIPS 2021; authors' code:
github.com/bboylyg/ABL), as a training-set detector.

ABL observes that backdoor examples are learned much faster than clean ones. Its first
stage trains a fresh model on the poisoned set for ``isolation_epochs`` = T_te = 20 epochs
[paper: 20 on CIFAR-10] with the **local gradient ascent** (LGA) loss

    L = sign(CE(f(x), y) - gamma) * CE(f(x), y),     gamma = 0.5 [paper],

which descends while the loss is above gamma and ascends once it falls below: the
training loss is held around gamma, so clean examples are not learned much further, while
backdoor examples, learned much faster through their shared trigger, fall far below it.
Every example is then scored by its cross-entropy under that model in eval mode, without
augmentation; the lowest-loss ``remove_fraction`` = 1% (the isolation rate p [paper: 1%])
are isolated. Here the score
is ``-loss`` (higher = more suspicious) and the cut is the shared fraction cut of
:class:`~detox.defenses.detectors.base.Detector`. ABL's second stage, unlearning the
isolated examples, is the model repair ``abl-unlearn``
(:mod:`detox.defenses.repairs.abl`), which calls :func:`isolate` below.

How detox runs it, and where it simplifies:

* **One training loop.** The isolation model trains with :func:`detox.training.train`;
  LGA is a :class:`~detox.training.TrainHook` (:class:`LGAHook`) whose ``on_loss``
  recomputes the batch's cross-entropy from the logits and returns the LGA loss in place
  of the loop's loss (it replaces the loss rather than adding to it).
* **The sign is taken on the batch's mean loss** (``lga = "batch"``, the default) [code:
  ``LGALoss`` applies it to ``nn.CrossEntropyLoss()``'s batch mean, in the authors' code and
  in BackdoorBench's port]. The paper's eq. 3 writes the sign inside the expectation, i.e.
  per example: ``lga = "example"``. Measured on the tests' planted set (small CNN, 2,000
  CIFAR-10 images, 80 BadNets poisons): per example, every poison whose loss falls below
  gamma is pushed back up to it, so poisons stay trapped with the clean examples (AUROC
  0.74 / 0.86 / 0.76 after 2 / 5 / 20 epochs, 35-45% of the 1% cut poisons), while the
  batch-mean sign lets them fall freely (AUROC 0.996 / 0.9997 / 0.996, the 1% cut all
  poisons). The batch form is the authors' implementation, the one behind the paper's
  numbers (and its picture of clean losses held near gamma while backdoor losses fall far
  below), so it is the default. While the batch's mean
  loss is above gamma (short runs: every epoch of the ``smoke`` and ``quick`` presets on
  the planted set) LGA is plain cross-entropy training.
* **Isolation needs the backdoor learned.** ABL assumes the isolation model has picked the
  trigger up within T_te epochs; if it has not, poisons (images of other classes under the
  target label) have *high* loss and the ranking inverts. On the planted set, 5 epochs
  (``quick``) left 2 of 6 seeds there (AUROC 0.25 and 0.56); 20 epochs (``paper``) gave
  AUROC 0.958-0.996 and 75-100% poisons in the 1% cut for all six.
* **The recipe is the victim's** (``ctx.train_config``: architecture, optimiser,
  augmentation, schedule), as if ABL's isolation were the first T_te epochs of the
  victim's own run: ``epochs = isolation_epochs`` and the LR schedule spans the victim's
  full run (``max(isolation_epochs, victim epochs)``) [open]. The authors isolate with
  their own SGD recipe (their code's defaults: lr 0.1, momentum 0.9, weight decay 1e-4,
  batch 64); detox uses the
  recipe the victim was trained with so that the method follows the run's scale (CPU
  smoke victims, AirNet, PreAct-ResNet-18). Two settings are changed: label smoothing is
  off (gamma is a value of the plain cross-entropy, which is what the authors train with)
  and the seed is derived from the run's (``derive_seed(seed, "abl-isolation")``).
* The losses of every example are computed batched on the device
  (:func:`detox.training.per_example_loss`; the authors use batch size 1).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detox.config import hp, make_config
from detox.data.base import ImageDataset
from detox.defenses.detectors.base import DETECTORS, Detector, DetectorContext, dataset_name
from detox.training import TrainConfig, TrainHook, per_example_loss, train
from detox.utils.seed import derive_seed

LGA_MODES = ("batch", "example")


@dataclasses.dataclass
class ABLConfig:
    """ABL isolation hyper-parameters (unit, source). See the module docstring."""

    gamma: float = hp(
        0.5, "loss (nats)", "[paper]", "LGA threshold: ascend on losses below it", range="[0, inf)"
    )
    isolation_epochs: int = hp(
        20, "epochs", "[paper: T_te = 20 on CIFAR-10]", "isolation training", range="[1, inf)"
    )
    lga: str = hp(
        "batch",
        "batch | example",
        "[code: batch mean; paper eq. 3: per example]",
        "where the sign of LGA is taken",
        choices=LGA_MODES,
    )
    remove_fraction: float = hp(
        0.01,
        "fraction",
        "[paper: isolation rate p = 1%]",
        "lowest-loss fraction of the set isolated",
        range="[0, 1]",
    )
    batch_size: int | None = hp(
        None,
        "images",
        "[open]",
        "isolation training batch; None = the victim's",
        range="[1, inf)",
    )

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"isolation_epochs": 2},
        "quick": {"isolation_epochs": 5},
        "paper": {},
    }


class LGAHook(TrainHook):
    """ABL's local gradient ascent as a :func:`~detox.training.train` callback: the batch's
    loss becomes ``sign(mean CE - gamma) * mean CE`` (the authors' code) or, with
    ``per_example``, ``mean(sign(CE - gamma) * CE)`` (the paper's eq. 3)."""

    def __init__(self, gamma: float, per_example: bool = False) -> None:
        self.gamma = float(gamma)
        self.per_example = bool(per_example)

    def on_loss(
        self, epoch: int, logits: torch.Tensor, yb: torch.Tensor, loss: torch.Tensor
    ) -> torch.Tensor:
        ce = F.cross_entropy(logits.float(), yb, reduction="none")
        if not self.per_example:
            ce = ce.mean()
        return (torch.sign(ce.detach() - self.gamma) * ce).mean()


def isolation_config(
    final: TrainConfig | None,
    config: ABLConfig,
    seed: int | None = None,
    progress: bool | None = None,
) -> TrainConfig:
    """The isolation run's :class:`TrainConfig`: the victim's (``final``; the project default
    when None) for ``isolation_epochs`` epochs, its LR schedule spanning the victim's full
    run, no label smoothing, seeded from ``seed`` (a child seed, never the victim's)."""
    base = final if final is not None else make_config(TrainConfig)
    over: dict[str, Any] = {
        "epochs": config.isolation_epochs,
        "schedule_epochs": max(config.isolation_epochs, base.schedule_epochs or base.epochs),
        "label_smoothing": 0.0,
    }
    if config.batch_size is not None:
        over["batch_size"] = config.batch_size
    if seed is not None:
        over["seed"] = derive_seed(int(seed), "abl-isolation")
    if progress is not None:
        over["progress"] = bool(progress)
    cfg = dataclasses.replace(base, **over)
    cfg.validate()
    return cfg


@dataclasses.dataclass
class Isolation:
    """What :func:`isolate` returns: ``loss`` (N,) float64 eval-mode CE of every example
    under the isolation model, ``scores`` = ``-loss``, the model, its config and history."""

    loss: np.ndarray
    model: nn.Module
    train_config: TrainConfig
    history: list[dict[str, float]]
    seconds: float

    @property
    def scores(self) -> np.ndarray:
        return -self.loss


def isolate(
    data: ImageDataset,
    config: ABLConfig,
    train_config: TrainConfig | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dataset: str | None = None,
    progress: bool = False,
) -> Isolation:
    """ABL's isolation stage: train a fresh model of the victim's architecture on ``data``
    with the LGA loss, then every example's eval-mode cross-entropy (batched)."""
    from detox.models import build_model

    t0 = time.perf_counter()
    tcfg = isolation_config(train_config, config, seed, progress)
    model = build_model(
        tcfg.model,
        len(data.classes),
        width=tcfg.width,
        in_channels=int(data.x.shape[1]),
        dataset=dataset_name(data, dataset),
        seed=tcfg.seed,
    )
    hook = LGAHook(config.gamma, per_example=config.lga == "example")
    res = train(model, data.x, data.y, tcfg, device=device, callbacks=[hook], desc="abl isolation")
    loss = per_example_loss(res.model, data.x, data.y, tcfg.eval_batch_size)
    loss = loss.double().numpy()
    if not np.isfinite(loss).all():
        from detox.errors import DivergedError

        raise DivergedError("ABL isolation: non-finite losses; lower the learning rate")
    return Isolation(loss, res.model, tcfg, res.history, time.perf_counter() - t0)


@DETECTORS.register("abl")
class ABL(Detector):
    """ABL's isolation (Li et al., NeurIPS 2021): see the module docstring.

    ``score`` fills ``ctx.artifacts["abl"]`` with the losses, the isolation config, its
    training history and the time taken."""

    name = "abl"
    Config = ABLConfig
    config: ABLConfig

    def isolate(self, data: ImageDataset, ctx: Any) -> Isolation:
        """:func:`isolate` with this config and the run's context (detector or repair)."""
        return isolate(data, self.config, ctx.train_config, ctx.seed, ctx.device, ctx.dataset,
                       ctx.progress)  # fmt: skip

    def score(self, data: ImageDataset, ctx: DetectorContext) -> np.ndarray:
        iso = self.isolate(data, ctx)
        ctx.artifacts["abl"] = {
            "loss": iso.loss,
            "isolation_config": dataclasses.asdict(iso.train_config),
            "history": iso.history,
            "seconds": iso.seconds,
        }
        return iso.scores


__all__ = ["ABL", "ABLConfig", "Isolation", "LGAHook", "isolate", "isolation_config"]
