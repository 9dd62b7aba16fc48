"""Cognitive Distillation (Huang, Ma, Erfani, Bailey, "Distilling Cognitive Backdoor
Patterns within an Image", ICLR 2023; code github.com/HanxunH/CognitiveDistillation).

For every image x, CD learns the smallest input mask m (one channel, values in [0, 1] through
``(tanh(w) + 1) / 2``) that keeps the model's logits: it minimises

    || f(x * m + (1 - m) * r) - f(x) ||_1 / K  +  gamma * ||m||_1  +  beta * TV(m)

with r a random colour per image and step (uniform in [0, 1] per channel), TV the mean
squared total variation, Adam (lr 0.1, betas (0.1, 0.1)) for ``num_steps`` steps from w = 1.
A backdoor image needs only its trigger to keep the target prediction: its "cognitive
pattern" is tiny, so the mask's L1 norm is small. Score = -||m||_1 (higher = more
suspicious). Settings [code]: lr 0.1, p = 1, gamma 0.01 (the paper's alpha), beta 10 (the
README's CIFAR-10 call; the class default is 1), 100 steps, one mask channel.

Cut: the code's analysis flags an image when its norm lies more than ``t`` = 1 standard
deviations below the mean norm (``cut = "zscore"``, mean and standard deviation of the
scored set); ``cut = "fraction"`` is the shared fraction cut.

Simplifications: the random colours are drawn from the run's seed per chunk of
``batch_size`` images, so scores are reproducible; each image's mask has its own Adam
state (Adam is elementwise), so the batch only groups the work. ``quick`` runs 30 steps
(the CPU cannot afford 100 forward and backward passes per training image).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from detox.config import hp
from detox.data.base import ImageDataset, to_float
from detox.defenses.detectors.base import DETECTORS, Detector, DetectorContext
from detox.errors import ConfigError
from detox.utils.seed import derive_seed


@dataclasses.dataclass
class CognitiveDistillationConfig:
    num_steps: int = hp(100, "Adam steps", "[code]", range="[1, inf)")
    lr: float = hp(0.1, "step size", "[code]", range="(0, inf)")
    gamma: float = hp(0.01, "weight of ||m||_1", "[code; the paper's alpha]", range="[0, inf)")
    beta: float = hp(10.0, "weight of TV(m)", "[code README: CIFAR-10]", range="[0, inf)")
    t: float = hp(1.0, "standard deviations", "[code] the zscore cut", range="[0, inf)")
    cut: str = hp(
        "zscore",
        "zscore | fraction",
        "[code: norm below mean - t std]",
        help="flag masks t std below the mean norm, or remove_fraction of the set by score",
        choices=("zscore", "fraction"),
    )
    remove_fraction: float = hp(0.15, "fraction", "[open] (cut = fraction)", range="[0, 1]")
    batch_size: int = hp(256, "images per optimisation", "[impl]", range="[1, inf)")

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"num_steps": 20},
        "quick": {"num_steps": 30},
        "paper": {},
    }


def total_variation(m: torch.Tensor) -> torch.Tensor:
    """Mean squared total variation of each mask of ``m`` (B, C, H, W) -> (B,): the
    authors' ``total_variation_loss`` (sum of squared neighbour differences / (C H W))."""
    b, c, h, w = m.shape
    tv_h = (m[:, :, 1:, :] - m[:, :, :-1, :]).pow(2).sum(dim=(1, 2, 3))
    tv_w = (m[:, :, :, 1:] - m[:, :, :, :-1]).pow(2).sum(dim=(1, 2, 3))
    return (tv_h + tv_w) / (c * h * w)


def distil_masks(
    model: nn.Module,
    x: torch.Tensor,
    cfg: CognitiveDistillationConfig,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """The distilled mask of every image of ``x`` (uint8 or [0, 1] float): (N, 1, H, W)."""
    from tqdm.auto import tqdm

    dev = torch.device(device)
    model.eval()
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    out = []
    bar = tqdm(total=len(x), desc="cognitive distillation", unit="img", disable=not progress,
               leave=False)  # fmt: skip
    try:
        for i in range(0, len(x), cfg.batch_size):
            xb = to_float(x[i : i + cfg.batch_size], dev)
            b, c, h, w = xb.shape
            g = torch.Generator().manual_seed(derive_seed(seed, i))
            with torch.no_grad():
                ref = model(xb).float()
            w_mask = torch.ones(b, 1, h, w, device=dev, requires_grad=True)
            opt = torch.optim.Adam([w_mask], lr=cfg.lr, betas=(0.1, 0.1))
            for _ in range(cfg.num_steps):
                opt.zero_grad()
                m = (torch.tanh(w_mask) + 1) / 2
                r = torch.rand(b, c, 1, 1, generator=g).to(dev)
                logits = model(xb * m + (1 - m) * r).float()
                loss = (logits - ref).abs().mean(1)
                loss = loss + cfg.gamma * m.abs().sum(dim=(1, 2, 3))
                loss = loss + cfg.beta * total_variation(m)
                loss.mean().backward()
                opt.step()
            out.append(((torch.tanh(w_mask) + 1) / 2).detach().cpu())
            bar.update(b)
    finally:
        bar.close()
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
    return torch.cat(out) if out else torch.empty(0, 1, *x.shape[2:])


@DETECTORS.register("cognitive-distillation", "cd")
class CognitiveDistillation(Detector):
    """Cognitive Distillation (Huang et al., ICLR 2023): see the module docstring.

    ``score`` fills ``ctx.artifacts["cognitive_distillation"]`` with the mask norms."""

    name = "cognitive-distillation"
    Config = CognitiveDistillationConfig
    config: CognitiveDistillationConfig
    needs_model = True

    def score(self, data: ImageDataset, ctx: DetectorContext) -> np.ndarray:
        model = ctx.require_model(self.name)
        masks = distil_masks(model, data.x, self.config, derive_seed(ctx.seed, "cd"),
                             ctx.device, ctx.progress)  # fmt: skip
        norms = masks.abs().sum(dim=(1, 2, 3)).double().numpy()
        ctx.artifacts["cognitive_distillation"] = {"mask_l1": norms}
        return -norms

    def own_cut(self, scores: np.ndarray, ctx: DetectorContext) -> np.ndarray:
        """The code's analysis: mask norm more than ``t`` standard deviations below the
        mean norm of the set."""
        norms = -np.asarray(scores, dtype=np.float64)
        if len(norms) < 2:
            raise ConfigError("cognitive distillation: the zscore cut needs 2 or more scores")
        return (norms.mean() - norms) / norms.std(ddof=1) > self.config.t
