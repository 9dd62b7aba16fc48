"""STRIP (Gao, Xu, Wang, Chen, Ranasinghe, Nepal, "STRIP: A Defence Against Trojan Attacks
on Deep Neural Networks", ACSAC 2019), as a training-set detector.

STRIP superimposes an input on ``n_perturb`` clean images and measures the entropy of the
model's predictions on the blends: a clean input's blends are classified all over the
place (high entropy), while a trigger keeps pulling every blend to the target class (low
entropy). The entropy of an input is the mean over its blends of the Shannon entropy (bits)
of the softmax. Settings, from the paper and the authors' code (github.com/garrisongys/STRIP):

* ``n_perturb`` = 100 blends per input [paper, code]; ``quick``: 20, ``smoke``: 8.
* ``blend = "add"``: ``cv2.addWeighted(clean, 1, x, 1, 0)`` on uint8 images, i.e. the sum,
  saturating at 255 [code]; ``"average"``: the half-and-half mean (other re-implementations).
* Threshold: the clean inputs' entropies are fitted by a normal distribution and the
  threshold is its ``frr`` quantile (``frr`` = 1% [paper]) [code: ``norm.ppf``];
  ``threshold = "quantile"`` takes the empirical quantile instead.

As a detector (the form in which UltraClean's and PSBD's papers compare against it) every
training example is scored by its negated entropy (higher = more suspicious), blended with
the trusted clean probes; the default cut (``cut = "frr"``) removes the examples whose
entropy falls below the threshold fitted on the probes' own entropies, ``cut = "fraction"``
the shared ``remove_fraction`` cut. The same computation serves the test-time form, the
``strip-filter`` input filter (:mod:`detox.defenses.filters.strip`; one name per defense across kinds).

Simplifications: the clean images blended in are the run's trusted probes (the paper uses
held-out clean images: the probes are exactly that); blends of a probe may draw the probe
itself (1 in ``n_probes``). Blend partners are drawn from the run's seed, one row per input,
so scores do not depend on the batch size.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from detox.config import hp
from detox.data.base import ImageDataset
from detox.defenses.detectors.base import DETECTORS, Detector, DetectorContext
from detox.errors import ConfigError
from detox.utils.seed import derive_seed


@dataclasses.dataclass
class StripConfig:
    n_perturb: int = hp(100, "blends per input", "[paper, code: N = 100]", range="[1, inf)")
    blend: str = hp(
        "add",
        "add | average",
        "[code: cv2.addWeighted(clean, 1, x, 1, 0), saturating]",
        choices=("add", "average"),
    )
    frr: float = hp(0.01, "fraction of clean inputs", "[paper: 1%]", range="(0, 1)")
    threshold: str = hp(
        "normal",
        "normal | quantile",
        "[code: norm.ppf(frr) of the clean entropies]",
        choices=("normal", "quantile"),
    )
    n_probes: int = hp(
        1000,
        "trusted clean images",
        "[open] blended in and fitting the threshold",
        range="[2, inf)",
    )
    cut: str = hp(
        "frr",
        "frr | fraction",
        "[paper: entropy below the threshold]",
        help="remove inputs below the FRR threshold, or remove_fraction of the set by score",
        choices=("frr", "fraction"),
    )
    remove_fraction: float = hp(0.15, "fraction", "[open] (cut = fraction)", range="[0, 1]")
    batch_size: int = hp(2048, "blends per forward pass", "[impl]", range="[1, inf)")

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"n_perturb": 8, "n_probes": 100},
        "quick": {"n_perturb": 20},
        "paper": {},
    }


@torch.inference_mode()
def strip_entropy(
    model: nn.Module,
    x: torch.Tensor,
    pool: torch.Tensor,
    n_perturb: int,
    seed: int,
    device: torch.device | str = "cpu",
    blend: str = "add",
    batch_size: int = 2048,
    progress: bool = False,
    desc: str = "STRIP",
) -> np.ndarray:
    """Mean prediction entropy (bits) of every uint8 image of ``x`` blended with
    ``n_perturb`` images of the uint8 ``pool`` (drawn from ``seed``, one row per image)."""
    if x.dtype != torch.uint8 or pool.dtype != torch.uint8:
        raise ConfigError("STRIP: expected uint8 images (N, C, H, W) for the input and pool")
    if len(pool) == 0:
        raise ConfigError("STRIP: the pool of clean images to blend with is empty")
    if x.shape[1:] != pool.shape[1:]:
        raise ConfigError(f"STRIP: inputs {tuple(x.shape[1:])} and clean pool "
                          f"{tuple(pool.shape[1:])} differ in shape")  # fmt: skip
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(int(seed))
    partners = torch.randint(len(pool), (len(x), n_perturb), generator=g)
    dev = torch.device(device)
    pool = pool.to(dev)  # once: each chunk gathers its blend partners on the device
    model.eval()
    per = max(1, batch_size // n_perturb)  # inputs per forward pass
    out = np.empty(len(x), dtype=np.float64)
    bar = tqdm(total=len(x), desc=desc, unit="img", disable=not progress, leave=False)
    for i in range(0, len(x), per):
        xb = x[i : i + per].to(dev).float()
        pb = pool[partners[i : i + per].to(dev)].float()  # (b, n, C, H, W)
        mix = xb[:, None] + pb
        mix = mix.clamp_(max=255.0) if blend == "add" else mix.mul_(0.5)
        logits = model(mix.flatten(0, 1).div_(255.0)).float()
        p = torch.softmax(logits, 1).view(len(xb), n_perturb, -1)
        ent = -(p * torch.log2(p.clamp_min(1e-12))).sum(2).mean(1)
        out[i : i + len(xb)] = ent.double().cpu().numpy()
        bar.update(len(xb))
    bar.close()
    return out


def entropy_threshold(clean_entropy: np.ndarray, frr: float, kind: str = "normal") -> float:
    """The entropy below which an input is refused, at false-rejection rate ``frr`` of the
    clean inputs: the ``frr`` quantile of a normal fitted to them (the authors' code) or
    the empirical quantile."""
    e = np.asarray(clean_entropy, dtype=np.float64)
    if len(e) < 2:
        raise ConfigError("STRIP: at least 2 clean inputs are needed to fit the threshold")
    if kind == "normal":
        from scipy.stats import norm

        return float(norm.ppf(frr, loc=e.mean(), scale=e.std(ddof=1)))
    return float(np.quantile(e, frr))


@DETECTORS.register("strip")
class Strip(Detector):
    """STRIP (Gao et al. 2019) on the training set: see the module docstring.

    ``score`` fills ``ctx.artifacts["strip"]`` with the entropies, the probes' entropies and
    the threshold."""

    name = "strip"
    Config = StripConfig
    config: StripConfig
    needs_model = True
    needs_probes = True

    def score(self, data: ImageDataset, ctx: DetectorContext) -> np.ndarray:
        cfg = self.config
        model = ctx.require_model(self.name)
        pool = ctx.require_trusted(self.name).x
        seed = derive_seed(ctx.seed, "strip")
        ent = strip_entropy(model, data.x, pool, cfg.n_perturb, seed, ctx.device, cfg.blend,
                            cfg.batch_size, ctx.progress)  # fmt: skip
        clean = strip_entropy(model, pool, pool, cfg.n_perturb, derive_seed(seed, "probes"),
                              ctx.device, cfg.blend, cfg.batch_size)  # fmt: skip
        thr = entropy_threshold(clean, cfg.frr, cfg.threshold)
        ctx.artifacts["strip"] = {"entropy": ent, "probe_entropy": clean, "threshold": thr}
        return -ent

    def own_cut(self, scores: np.ndarray, ctx: DetectorContext) -> np.ndarray:
        """The paper's cut: entropy below the threshold fitted on the probes."""
        info = ctx.artifacts.get("strip")
        if info is None:
            raise ConfigError("STRIP: cut() needs the threshold that score() records")
        return -np.asarray(scores, dtype=np.float64) < info["threshold"]
