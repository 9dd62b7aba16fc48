"""PSBD (Li, Chen, Liu, Wang, "PSBD: Prediction Shift Uncertainty Unlocks Backdoor
Detection", CVPR 2025; arXiv 2406.05826; code github.com/WL-619/PSBD).

Prediction shift: with dropout switched on at inference, a backdoored model's predictions
on clean inputs drift away from their label, while inputs carrying the trigger keep their
(target) prediction. PSBD measures it per example as the **prediction shift uncertainty**
``PSU(x) = p(l | x) - mean_k p_k(l | x)``: the softmax probability of the model's own
prediction ``l`` (dropout off) minus its mean over ``forward_passes`` = 3 passes with
dropout on. Backdoor examples have a small PSU. Settings [code]:

* dropout after every block of the network (the authors' ResNet-18 drops out after each
  residual block; detox uses the model's ``blocks()``: residual blocks, AirNet's groups,
  the conv stages of VGG and the small CNN);
* the dropout rate is chosen from 0.1, ..., 0.9 with the clean validation set: the shift
  ratio (the fraction of dropout passes whose prediction differs from ``l``) is measured on
  the validation set and on the training set; among the rates where the validation set's
  ratio is at least 0.8, the one with the largest gap (validation minus training) wins;
  when none reaches 0.8, the largest gap over all rates;
* the threshold is the 25% quantile of the validation set's PSU; training examples below
  it are flagged (the cut, ``cut = "psu"``).

The clean validation set is the run's trusted probes (the authors use 5% of the training
set's size of extra clean data, ``val_budget_rate`` 0.05: ``n_probes`` = 2,500 on
CIFAR-10). The score is ``-PSU`` (higher = more suspicious).

Simplifications: the rate selection measures the training set's shift ratio on a seeded
subset of ``select_subset`` examples (the code uses all of them; the ratio is a mean, and
5,000 examples put it within about 1.4 points); dropout masks are drawn from the run's seed,
per chunk of ``batch_size`` inputs, so the scores are reproducible (the code relies on the
global RNG).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detox.config import hp
from detox.data.base import ImageDataset, to_float
from detox.defenses.detectors.base import DETECTORS, Detector, DetectorContext
from detox.errors import ConfigError
from detox.utils.seed import derive_seed


@dataclasses.dataclass
class PSBDConfig:
    forward_passes: int = hp(3, "dropout passes", "[code]", range="[1, inf)")
    rates: tuple[float, ...] = hp(
        (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), "dropout rates tried", "[code]"
    )
    drop_rate: float | None = hp(
        None, "dropout rate", "[open] None: chosen from rates as the code does", range="(0, 1)"
    )
    val_shift_min: float = hp(0.8, "shift ratio", "[code] the validation set's minimum")
    quantile: float = hp(0.25, "quantile of the validation PSU", "[code]", range="(0, 1)")
    n_probes: int = hp(
        2500, "clean validation images", "[code: 5% of the training set]", range="[2, inf)"
    )
    select_subset: int = hp(
        5000, "training examples", "[impl] for the rate selection's shift ratio", range="[1, inf)"
    )
    cut: str = hp(
        "psu",
        "psu | fraction",
        "[code: PSU below the threshold]",
        help="flag PSU below the validation quantile, or remove_fraction of the set by score",
        choices=("psu", "fraction"),
    )
    remove_fraction: float = hp(0.15, "fraction", "[open] (cut = fraction)", range="[0, 1]")
    batch_size: int = hp(512, "images per forward pass", "[impl]", range="[1, inf)")

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"n_probes": 100, "select_subset": 500, "rates": (0.3, 0.5, 0.7, 0.9)},
        "quick": {},
        "paper": {"select_subset": 10**9},
    }

    def validate(self) -> None:
        if not self.rates or any(not 0.0 < r < 1.0 for r in self.rates):
            raise ConfigError(f"PSBD: rates must lie in (0, 1), got {self.rates!r}")


class _BlockDropout:
    """Dropout after each of ``model.blocks()`` while active, masks from a generator."""

    def __init__(self, model: nn.Module) -> None:
        blocks = getattr(model, "blocks", None)
        if blocks is None:
            raise ConfigError(f"PSBD needs a model with blocks(); {type(model).__name__} has none")
        self.rate = 0.0
        self.gen: torch.Generator | None = None
        self.handles = [b.register_forward_hook(self._hook) for b in blocks()]

    def _hook(self, module: nn.Module, inp: Any, out: torch.Tensor) -> torch.Tensor | None:
        if self.gen is None or self.rate <= 0.0:
            return None
        keep = torch.rand(out.shape, generator=self.gen, device=out.device) >= self.rate
        return out * keep.to(out.dtype) / (1.0 - self.rate)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@torch.inference_mode()
def prediction_shift(
    model: nn.Module,
    x: torch.Tensor,
    rate: float,
    passes: int,
    seed: int,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """(PSU, shift ratio) of every image of ``x`` at dropout ``rate``: the drop of the
    probability of the model's own prediction under dropout, and the fraction of the
    ``passes`` whose prediction changed. Masks are drawn per chunk of ``batch_size``."""
    model.eval()
    drop = _BlockDropout(model)
    dev = torch.device(device)
    psu = np.empty(len(x), dtype=np.float64)
    shift = np.empty(len(x), dtype=np.float64)
    try:
        for i in range(0, len(x), batch_size):
            xb = to_float(x[i : i + batch_size], dev)
            drop.gen = None
            p0 = F.softmax(model(xb).float(), 1)
            lab = p0.argmax(1, keepdim=True)
            gen = torch.Generator(device=dev).manual_seed(derive_seed(seed, i))
            drop.rate, drop.gen = rate, gen  # masks drawn on the device
            probs, changed = [], torch.zeros(len(xb), device=dev)
            for _ in range(passes):
                p = F.softmax(model(xb).float(), 1)
                probs.append(p)
                changed += (p.argmax(1, keepdim=True) != lab).float().squeeze(1)
            pm = torch.stack(probs).mean(0)
            psu[i : i + len(xb)] = (p0 - pm).gather(1, lab).squeeze(1).double().cpu().numpy()
            shift[i : i + len(xb)] = (changed / passes).double().cpu().numpy()
    finally:
        drop.close()
    return psu, shift


def select_rate(train_shift: dict[float, float], val_shift: dict[float, float], vmin: float):
    """The authors' rule: among the rates where the validation set's shift ratio reaches
    ``vmin``, the one with the largest (validation - training) gap; else over all rates."""
    rates = sorted(val_shift)
    ok = [r for r in rates if val_shift[r] >= vmin] or rates
    return max(ok, key=lambda r: (val_shift[r] - train_shift[r], -r))


@DETECTORS.register("psbd")
class PSBD(Detector):
    """PSBD (Li et al., CVPR 2025): see the module docstring.

    ``score`` fills ``ctx.artifacts["psbd"]`` with the chosen rate, the shift ratios per
    rate, the PSU of the training set and of the probes, and the threshold."""

    name = "psbd"
    Config = PSBDConfig
    config: PSBDConfig
    needs_model = True
    needs_probes = True

    def score(self, data: ImageDataset, ctx: DetectorContext) -> np.ndarray:
        cfg = self.config
        model = ctx.require_model(self.name)
        val = ctx.require_trusted(self.name).x
        seed = derive_seed(ctx.seed, "psbd")
        args = (cfg.forward_passes, seed, ctx.device, cfg.batch_size)
        train_ratio: dict[float, float] = {}
        val_ratio: dict[float, float] = {}
        rate = cfg.drop_rate
        if rate is None:
            g = torch.Generator().manual_seed(derive_seed(seed, "subset"))
            sub = torch.randperm(len(data.x), generator=g)[: cfg.select_subset].sort().values
            for r in cfg.rates:
                train_ratio[r] = float(prediction_shift(model, data.x[sub], r, *args)[1].mean())
                val_ratio[r] = float(prediction_shift(model, val, r, *args)[1].mean())
            rate = select_rate(train_ratio, val_ratio, cfg.val_shift_min)
        psu, _ = prediction_shift(model, data.x, rate, *args)
        val_psu, _ = prediction_shift(model, val, rate, *args)
        thr = float(np.quantile(val_psu, cfg.quantile))
        ctx.artifacts["psbd"] = {
            "rate": rate,
            "train_shift_ratio": train_ratio,
            "val_shift_ratio": val_ratio,
            "psu": psu,
            "val_psu": val_psu,
            "threshold": thr,
        }
        return -psu

    def own_cut(self, scores: np.ndarray, ctx: DetectorContext) -> np.ndarray:
        """The authors' cut: PSU below the validation set's ``quantile``."""
        info = ctx.artifacts.get("psbd")
        if info is None:
            raise ConfigError("PSBD: cut() needs the threshold that score() records")
        return -np.asarray(scores, dtype=np.float64) < info["threshold"]
