"""Frequency-based backdoor data detection (Zeng, Park, Mao, Jia, "Rethinking the Backdoor
Attacks' Triggers: A Frequency Perspective", ICCV 2021; arXiv 2104.03413; authors' code:
github.com/YiZeng623/frequency-backdoor, ``Sec4_Frequency_Detection/Train_Detection.ipynb``).

Backdoor triggers leave high-frequency artefacts that natural images lack. The detector is a
binary classifier of the **DCT spectrum** of an image: a small 6-layer CNN trained to tell
clean images (label 0) from synthetically corrupted copies of them (label 1). It needs no
victim model and no poisoned data: only clean images, to which the corruptions are applied.
Every training example is then scored by the classifier's belief that it is corrupted.

The synthetic corruptions, one per image and drawn uniformly among five [code:
``patching_train``]:

0. a white block of ``2..7 x 2..7`` pixels in one of the four corners, ``0..5`` pixels from
   the border;
1. the same block filled with uniform random colours;
2. Gaussian noise of mean 25 and variance ``U(10, 70)`` (pixel units, per pixel and
   channel) [code: ``albumentations.GaussNoise(mean=25, var_limit=(10, 70))``];
3. a random shadow: 1 or 2 five-vertex polygons with vertices in the lower half of the
   image whose pixels get their HLS lightness halved [code: ``albumentations.RandomShadow``
   with its defaults];
4. the image plus ``blend_alpha`` = 0.3 times another clean image, saturating [code].

Images are quantised to uint8 (truncation, as the code's ``astype(np.uint8)``) and each
channel is transformed by the orthonormal 2-D DCT-II of its pixel values in [0, 255], with
no further normalisation [code: ``dct2`` of ``(x * 255).astype(np.uint8)``]. Here the DCT is
a matrix product ``D X D^T`` (:func:`dct_matrix`, :func:`dct2`), batched on the device.

The network [code]: ``conv3x3(32) ELU BN, conv3x3(32) ELU BN, maxpool, dropout 0.2``, the
same with 64 (dropout 0.3) and 128 channels (dropout 0.4), then a linear layer to 2 classes;
convolutions carry an L2 penalty 1e-4 on their kernels (Keras ``l2(1e-4)``: a gradient of
``2e-4 w``); Glorot-uniform kernels and zero biases (Keras's initialisation); BatchNorm with
epsilon 1e-3 and Keras's momentum 0.99 (``bn_momentum`` = 0.01 in PyTorch's convention).
Training [code]: Adadelta, lr 0.05 (Keras's rho 0.95, epsilon 1e-7), batch 64, cross-entropy;
5 rounds of 10 epochs, each round on freshly corrupted copies of the clean set
(``epochs`` = 50, ``redraw_every`` = 10), every epoch on the clean set plus one corrupted copy
of each of its images (balanced classes), shuffled.

Settings and presets:

* ``paper``: the code's recipe above on ``n_probes`` = 5,000 trusted images.
* ``quick`` (about 1-2 minutes on 2 CPU cores): 1,000 images, 10 epochs, fresh corruptions
  every epoch, Adam lr 1e-3, BatchNorm momentum 0.1. ``smoke`` (tests): 500 images, the
  network at ``width`` 0.5, 8 epochs.
* Score: the log-odds ``logit(corrupted) - logit(clean)`` of the trained network in eval
  mode, higher = more suspicious; a monotone function of the probability of "corrupted"
  that does not saturate at 1.0 in floating point (``ctx.artifacts["frequency-detector"]``
  holds the probabilities). The default cut is the classifier's own verdict, probability
  above ``threshold`` = 0.5 (log-odds above 0) [code: its argmax]; ``cut = "fraction"`` takes
  the shared ``remove_fraction`` cut instead.

Where detox simplifies, and why:

* **The clean data are the run's trusted probes** (``ctx.trusted``, ``n_probes`` of them)
  [open]. The paper trains on the whole clean CIFAR-10 training set (50,000 images) and
  tests on other data; a training-set defense in detox holds only what the defender vouches
  for. Since corruptions are redrawn (each epoch in ``quick`` and ``smoke``), a small clean
  set still yields many different corrupted examples; the clean side is what it is.
* **The corruptions are torch ops**, not albumentations/OpenCV: every random choice comes
  from a generator seeded from the run's seed (``derive_seed(ctx.seed, "frequency-detector",
  ...)``), for the whole batch at once. The blend partner is drawn from the trusted set (the
  code draws from the clean training set: the same role). The shadow polygon is rasterised
  by the even-odd rule at pixel centres (OpenCV's ``fillPoly`` draws edges too) and the
  lightness is halved in floating point (OpenCV's 8-bit HLS quantises hue to 2 degrees).
* **Short runs use Adam and a faster BatchNorm average** (``quick``, ``smoke``) [open]:
  Adadelta at lr 0.05 warms up over thousands of steps and Keras's BatchNorm momentum 0.99
  leaves the running statistics near their initial values after a few hundred steps (the
  inputs are raw DCT coefficients of magnitude up to 8,160), so eval-mode scores of a short
  run would be meaningless. ``optimizer = "adadelta"`` and ``bn_momentum = 0.01`` restore the
  code's recipe.
* ``width`` scales every layer's channels (1.0: the code's 32-64-128) [open], for tests.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit
from torch import nn

from detox.config import hp
from detox.data.base import ImageDataset
from detox.defenses.detectors.base import DETECTORS, Detector, DetectorContext
from detox.errors import ConfigError
from detox.utils.seed import derive_seed, seeded_global_rng

NAME = "frequency-detector"
KINDS = ("white-block", "random-block", "noise", "shadow", "blend")
MIN_SIDE = 12  # the corner blocks: up to 5 pixels of margin + 7 pixels of block
CORRUPT_CHUNK = 1024  # images corrupted at once (bounds the shadow rasteriser's memory)


@dataclasses.dataclass
class FrequencyDetectorConfig:
    n_probes: int = hp(
        1000,
        "trusted clean images",
        "[open] the paper: the whole clean CIFAR-10 training set (50,000)",
        "clean images the detector trains on (and corrupts)",
        range="[16, inf)",
    )
    epochs: int = hp(50, "epochs", "[code: 5 rounds x 10 epochs]", range="[1, inf)")
    redraw_every: int = hp(
        10,
        "epochs",
        "[code: fresh corrupted copies each round of 10 epochs]",
        "draw new corrupted copies every this many epochs",
        range="[1, inf)",
    )
    batch_size: int = hp(64, "images", "[code]", range="[2, inf)")
    optimizer: str = hp(
        "adadelta", "adadelta | adam", "[code: Adadelta]", choices=("adadelta", "adam")
    )
    lr: float = hp(0.05, "learning rate", "[code: Adadelta(lr=0.05)]", range="(0, inf)")
    weight_decay: float = hp(
        1e-4,
        "L2 coefficient",
        "[code: kernel_regularizer=l2(1e-4) on every convolution]",
        "penalty wd * sum(w^2) on the conv kernels",
        range="[0, inf)",
    )
    bn_momentum: float = hp(
        0.01,
        "PyTorch momentum",
        "[code: Keras BatchNormalization momentum 0.99]",
        range="(0, 1]",
    )
    width: float = hp(1.0, "channel multiplier", "[code: 32-64-128 channels]", range="(0, 4]")
    blend_alpha: float = hp(
        0.3, "weight of the blended image", "[code: output + 0.3 * tri]", range="(0, 1]"
    )
    cut: str = hp(
        "threshold",
        "threshold | fraction",
        "[code: the classifier's verdict]",
        "remove examples classified as corrupted, or remove_fraction of the set by score",
        choices=("threshold", "fraction"),
    )
    threshold: float = hp(
        0.5, "probability of corrupted", "[code: argmax of 2 classes]", range="(0, 1)"
    )
    remove_fraction: float = hp(0.15, "fraction", "[open] (cut = fraction)", range="[0, 1]")
    score_batch: int = hp(1024, "images per forward pass", "[impl]", range="[1, inf)")

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {
            "n_probes": 500,
            "epochs": 8,
            "redraw_every": 1,
            "optimizer": "adam",
            "lr": 1e-3,
            "bn_momentum": 0.1,
            "width": 0.5,
        },
        "quick": {
            "epochs": 10,
            "redraw_every": 1,
            "optimizer": "adam",
            "lr": 1e-3,
            "bn_momentum": 0.1,
        },
        "paper": {"n_probes": 5000},
    }


# ---------------------------------------------------------------------------------------
# the DCT


def dct_matrix(n: int, dtype: torch.dtype = torch.float64, device: Any = None) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``D`` (n x n): ``D @ x`` is scipy's
    ``dct(x, norm="ortho")``; ``D[k, i] = a_k cos(pi (2 i + 1) k / (2 n))``, ``a_0 =
    sqrt(1/n)``, ``a_k = sqrt(2/n)``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype=dtype, device=device)


def dct2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-II over the last two axes of ``x`` (any leading shape), as
    ``D_h @ x @ D_w^T``; float64 stays float64, anything else is computed in float32."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    h, w = x.shape[-2:]
    dh = dct_matrix(h, dtype, x.device)
    dw = dh if w == h else dct_matrix(w, dtype, x.device)
    return dh @ x.to(dtype) @ dw.T


# ---------------------------------------------------------------------------------------
# the synthetic corruptions


def _halve_lightness(x: torch.Tensor) -> torch.Tensor:
    """Halve the HLS lightness of every pixel of ``x`` (B, C, H, W) in [0, 255], keeping
    hue and saturation (what ``add_shadow`` does through OpenCV's HLS)."""
    mx, mn = x.amax(1, keepdim=True), x.amin(1, keepdim=True)
    light = (mx + mn) / 510.0  # L in [0, 1]
    chroma = (mx - mn) / 255.0
    denom = 1.0 - (2.0 * light - 1.0).abs()
    sat = torch.where(denom > 1e-12, chroma / denom.clamp_min(1e-12), torch.zeros_like(denom))
    new_l = light / 2.0
    new_c = (1.0 - (2.0 * new_l - 1.0).abs()) * sat  # = L * S
    base = new_l - new_c / 2.0
    shape = torch.where(chroma > 0, (x - mn) / (mx - mn).clamp_min(1e-12), torch.zeros_like(x))
    return (base + new_c * shape) * 255.0


def _polygon_mask(vx: torch.Tensor, vy: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pixels (centres at integer coordinates, x = column, y = row) inside polygons, by
    the even-odd rule: vertices ``vx``, ``vy`` (..., V) -> mask (..., h, w)."""
    py = torch.arange(h, dtype=vx.dtype, device=vx.device)[:, None]
    px = torch.arange(w, dtype=vx.dtype, device=vx.device)[None, :]
    x0, y0 = vx[..., None, None], vy[..., None, None]  # (..., V, 1, 1)
    x1, y1 = vx.roll(-1, -1)[..., None, None], vy.roll(-1, -1)[..., None, None]
    straddles = (y0 > py) != (y1 > py)
    dy = torch.where(y1 == y0, torch.ones_like(y1), y1 - y0)
    cross_x = x0 + (py - y0) * (x1 - x0) / dy
    crossings = (straddles & (px < cross_x)).sum(-3)
    return crossings % 2 == 1


def corrupt(
    x: torch.Tensor, pool: torch.Tensor, generator: torch.Generator, blend_alpha: float = 0.3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupted copies of the uint8 images ``x`` (B, C, H, W): one of the five synthetic
    triggers of the module docstring per image, its random choices from ``generator`` (CPU;
    all drawn for the whole batch). ``pool``: uint8 clean images to blend with. Returns the
    uint8 images (on ``x``'s device) and each image's kind (0..4, indices into ``KINDS``)."""
    b, c, h, w = x.shape
    dev, g = x.device, generator

    def draw(fn, *args, **kw):  # every random draw on the CPU generator, then to the device
        return fn(*args, generator=g, **kw).to(dev)

    kind = draw(torch.randint, 0, 5, (b,))
    # kinds 0 and 1: a block in a corner
    ph, pw = draw(torch.randint, 2, 8, (b,)), draw(torch.randint, 2, 8, (b,))
    margin, corner = draw(torch.randint, 0, 6, (b,)), draw(torch.randint, 0, 4, (b,))
    top, left = corner < 2, corner % 2 == 0
    r0 = torch.where(top, margin, h - margin - ph)
    c0 = torch.where(left, margin, w - margin - pw)
    rows, cols = torch.arange(h, device=dev), torch.arange(w, device=dev)
    in_r = (rows[None] >= r0[:, None]) & (rows[None] < (r0 + ph)[:, None])
    in_c = (cols[None] >= c0[:, None]) & (cols[None] < (c0 + pw)[:, None])
    block = (in_r[:, :, None] & in_c[:, None, :])[:, None]  # (B, 1, H, W)
    noise_block = draw(torch.rand, (b, c, h, w)) * 255.0
    # kind 2: Gaussian noise, mean 25, variance U(10, 70)
    sigma = (10.0 + 60.0 * draw(torch.rand, (b,))).sqrt()
    gauss = 25.0 + sigma[:, None, None, None] * draw(torch.randn, (b, c, h, w))
    # kind 3: 1 or 2 shadows, 5 vertices each in the lower half (x in [0, W], y in [H/2, H])
    n_shadows = draw(torch.randint, 1, 3, (b,))
    vx = draw(torch.randint, 0, w + 1, (b, 2, 5)).double()
    vy = draw(torch.randint, int(0.5 * h), h + 1, (b, 2, 5)).double()
    inside = _polygon_mask(vx, vy, h, w)  # (B, 2, H, W)
    inside[:, 1] &= (n_shadows == 2)[:, None, None]
    shadow = inside.any(1, keepdim=True)
    # kind 4: plus alpha times another clean image
    partner = draw(torch.randint, 0, len(pool), (b,))

    xf = x.float()
    k = kind[:, None, None, None]
    out = xf.clone()
    out = torch.where((k == 0) & block, torch.full_like(xf, 255.0), out)
    out = torch.where((k == 1) & block, noise_block, out)
    out = torch.where(k == 2, xf + gauss, out)
    out = torch.where((k == 3) & shadow, _halve_lightness(xf), out)
    blend = xf + blend_alpha * pool[partner.to(pool.device)].to(dev).float()
    out = torch.where(k == 4, blend, out)
    return out.clamp_(0.0, 255.0).floor_().to(torch.uint8), kind


# ---------------------------------------------------------------------------------------
# the network


class SpectrumCNN(nn.Module):
    """The code's 6-layer CNN on (B, C, H, W) DCT spectra -> 2 logits (clean, corrupted)."""

    def __init__(
        self,
        in_channels: int,
        size: tuple[int, int],
        width: float = 1.0,
        bn_momentum: float = 0.01,
        seed: int = 0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for base, drop in ((32, 0.2), (64, 0.3), (128, 0.4)):
            cout = max(1, round(base * width))
            for _ in range(2):
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ELU(),
                           nn.BatchNorm2d(cout, eps=1e-3, momentum=bn_momentum)]  # fmt: skip
                cin = cout
            layers += [nn.MaxPool2d(2), nn.Dropout(drop)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin * (size[0] // 8) * (size[1] // 8), 2)
        g = torch.Generator().manual_seed(int(seed))
        for m in self.modules():  # Keras's initialisation: Glorot-uniform kernels, zero biases
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(m.weight, generator=g)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))

    def conv_kernels(self) -> list[nn.Parameter]:
        return [m.weight for m in self.features if isinstance(m, nn.Conv2d)]


def _optimizer(model: SpectrumCNN, cfg: FrequencyDetectorConfig) -> torch.optim.Optimizer:
    kernels = model.conv_kernels()
    ids = {id(p) for p in kernels}
    rest = [p for p in model.parameters() if id(p) not in ids]
    # Keras adds wd * sum(w^2) to the loss: the gradient gains 2 * wd * w
    groups = [{"params": kernels, "weight_decay": 2.0 * cfg.weight_decay},
              {"params": rest, "weight_decay": 0.0}]  # fmt: skip
    if cfg.optimizer == "adadelta":
        return torch.optim.Adadelta(groups, lr=cfg.lr, rho=0.95, eps=1e-7)
    return torch.optim.Adam(groups, lr=cfg.lr)


def check_images(x: torch.Tensor, what: str) -> None:
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ConfigError(f"{NAME}: expected {what} as uint8 images (N, C, H, W), got "
                          f"{x.dtype} of shape {tuple(x.shape)}")  # fmt: skip
    if min(x.shape[-2:]) < MIN_SIDE:
        raise ConfigError(f"{NAME}: {what} of {x.shape[-2]}x{x.shape[-1]} pixels; the "
                          f"synthetic corner blocks need at least {MIN_SIDE}x{MIN_SIDE}")  # fmt: skip


def train_detector(
    clean: torch.Tensor,
    cfg: FrequencyDetectorConfig,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[SpectrumCNN, list[dict[str, float]]]:
    """Train the spectrum classifier on the uint8 clean images ``clean`` (label 0) and
    corrupted copies of them (label 1, redrawn every ``redraw_every`` epochs). Every random
    choice (initialisation, corruptions, shuffling, dropout) comes from ``seed``."""
    from tqdm.auto import tqdm

    check_images(clean, "the trusted clean images")
    if len(clean) < 16:
        raise ConfigError(f"{NAME}: {len(clean)} trusted clean images; at least 16 are needed "
                          "to train the spectrum classifier (set n_probes)")  # fmt: skip
    dev = torch.device(device)
    n = len(clean)
    model = SpectrumCNN(clean.shape[1], tuple(clean.shape[-2:]), cfg.width, cfg.bn_momentum,
                        derive_seed(seed, "init")).to(dev)  # fmt: skip
    opt = _optimizer(model, cfg)
    clean_dev = clean.to(dev)
    spec_clean = dct2(clean_dev.float())
    labels = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)]).to(dev)
    shuffle = torch.Generator().manual_seed(derive_seed(seed, "shuffle"))
    steps = math.ceil(2 * n / cfg.batch_size)
    history: list[dict[str, float]] = []
    bar = tqdm(total=cfg.epochs * steps, desc=NAME, unit="step", disable=not progress,
               leave=False)  # fmt: skip
    spec = spec_clean
    with seeded_global_rng(derive_seed(seed, "dropout"), dev):  # dropout draws from it
        model.train()
        for epoch in range(cfg.epochs):
            if epoch % cfg.redraw_every == 0:  # fresh corrupted copies, in chunks
                bad = []
                for j in range(0, n, CORRUPT_CHUNK):
                    g = torch.Generator().manual_seed(derive_seed(seed, "corrupt", epoch, j))
                    xj, _ = corrupt(clean_dev[j : j + CORRUPT_CHUNK], clean_dev, g,
                                    cfg.blend_alpha)  # fmt: skip
                    bad.append(dct2(xj.float()))
                spec = torch.cat([spec_clean, *bad])
            order = torch.randperm(2 * n, generator=shuffle).to(dev)
            total, correct = 0.0, 0
            for i in range(0, 2 * n, cfg.batch_size):
                idx = order[i : i + cfg.batch_size]
                logits = model(spec[idx])
                loss = F.cross_entropy(logits, labels[idx])
                if not torch.isfinite(loss):
                    raise ConfigError(f"{NAME}: the training loss became {loss.item()}; "
                                      "lower lr")  # fmt: skip
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == labels[idx]).sum())
                bar.update(1)
            history.append({"epoch": epoch + 1, "loss": total / (2 * n),
                            "accuracy": correct / (2 * n)})  # fmt: skip
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", acc=f"{correct / (2 * n):.3f}")
    bar.close()
    model.eval()
    return model, history


@torch.inference_mode()
def log_odds(
    model: SpectrumCNN, x: torch.Tensor, device: torch.device | str = "cpu", batch: int = 1024
) -> np.ndarray:
    """``logit(corrupted) - logit(clean)`` of every uint8 image of ``x`` (float64)."""
    model.eval()
    dev = torch.device(device)
    out = np.empty(len(x), dtype=np.float64)
    for i in range(0, len(x), batch):
        logits = model(dct2(x[i : i + batch].to(dev).float())).double()
        out[i : i + batch] = (logits[:, 1] - logits[:, 0]).cpu().numpy()
    return out


@DETECTORS.register(NAME, "fd", "zeng")
class FrequencyDetector(Detector):
    """Zeng et al. (2021)'s frequency-based detector: see the module docstring.

    ``score`` fills ``ctx.artifacts["frequency-detector"]`` with the probability of
    "corrupted" of every example and the training history."""

    name = NAME
    Config = FrequencyDetectorConfig
    config: FrequencyDetectorConfig
    needs_probes = True

    def score(self, data: ImageDataset, ctx: DetectorContext) -> np.ndarray:
        cfg = self.config
        clean = ctx.require_trusted(self.name).x
        check_images(data.x, "the training images")
        check_images(clean, "the trusted clean images")
        if clean.shape[1:] != data.x.shape[1:]:
            raise ConfigError(f"{NAME}: trusted images {tuple(clean.shape[1:])} and training "
                              f"images {tuple(data.x.shape[1:])} differ in shape")  # fmt: skip
        seed = derive_seed(ctx.seed, NAME)
        model, history = train_detector(clean, cfg, seed, ctx.device, ctx.progress)
        scores = log_odds(model, data.x, ctx.device, cfg.score_batch)
        ctx.artifacts[NAME] = {
            "p_corrupted": expit(scores),
            "history": history,
        }
        return scores

    def own_cut(self, scores: np.ndarray, ctx: DetectorContext) -> np.ndarray:
        """The classifier's verdict: probability of "corrupted" above ``threshold``."""
        t = self.config.threshold
        return np.asarray(scores, dtype=np.float64) > math.log(t / (1.0 - t))
