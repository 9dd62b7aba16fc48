"""Lite-BD: a lightweight, query-based black-box test-time purifier.

Miah and Bi, "Lite-BD: A Lightweight Black-box Backdoor Defense via Reviving Multi-Stage
Image Transformations", arXiv 2602.07197 (2026); the authors' code:
github.com/SiSL-URI/Lite-BD (``Lite-BD(SW).py``). A model-aware purifier
(``needs_model``): it only *queries* the victim (softmax outputs of [0, 1] images, no
gradients, no weights), which is what the paper's black-box setting allows.

For a batch ``x`` (float [0, 1], B x C x H x W), every image on its own, all images of a
batch in one forward pass per step:

0. **Reference query.** ``p0 = softmax(f(x))``, ``y0 = argmax p0``, ``c0 = p0[y0]``
   (1 query). A later query ``p`` *breaks the decision* when ``argmax p != y0`` **and**
   ``c0 - p[y0] > tau`` (detox's rule [open]: the authors' code counts any change of the
   label; the confidence margin keeps a low-confidence clean image, whose label flips
   under almost any change, from being altered, while a trigger's label, held with
   near-certainty, collapses when the trigger goes).
1. **Stage 1, down-up scaling** [paper]. Down-scale by ``scale`` (bilinear,
   ``floor(H * scale)`` x ``floor(W * scale)`` [code]), then super-resolve back to H x W.
   Fine, high-frequency triggers (BadNets' 3x3 checkerboard) do not survive the small
   image, and the super-resolution cannot bring back what is not there. *The paper's
   learned SR model (SwinIR, or Real-ESRGAN) is not available offline; detox uses a
   classical one*: bicubic up-scaling followed by ``sr_iters`` steps of iterative
   back-projection (Irani and Peleg, 1991): ``sr <- sr + up(lr - down(sr))``, with the
   same ``down`` as above and bicubic ``up``, which makes the result consistent with the
   small image (``down(sr) ~= lr``) and re-sharpens edges; clipped to [0, 1] [open].
   One query; where it breaks the decision, the output is ``sr`` and the image is done
   [code: the authors' pipeline returns stage 1's image when its label differs from the
   label before the defense].
2. **Stage 2, band-by-band frequency filtering** [paper], for the images stage 1 left
   alone, on the *original* image (as the authors' code does). Its 2-D spectrum
   (``torch.fft.rfft2``) is split into ``n_bands`` rings of equal width in normalised
   radius ``r = |(fy, fx)| / |(H // 2, W // 2)|`` (integer frequencies; the authors'
   normalisation, ``r`` in [0, 1]) with soft edges: band ``k`` has the weight
   ``S(r - k / n) - S(r - (k + 1) / n)``, ``S`` a linear ramp of width ``transition``
   [code: 0.08] from 1 (below the edge) to 0 (``S = 1`` below band 0, ``0`` above the
   last band), so the weights of all bands sum to exactly 1 and the band images
   (:func:`frequency_bands`) sum back to the image. Bands are tried **from the highest to
   the lowest**, one query each, at most ``band_queries`` per image; the ``keep_low``
   lowest bands (band 0 holds the mean colour) are never removed. A step's candidate is
   the image without the bands removed so far *and* the band tried, clipped to [0, 1]
   and unsharp-masked (``z + sharpen * (z - box3(z))``, reflect padding) [code:
   ``unsharp`` recovery, amount 0.5; zero padding there]; the victim sees exactly the
   candidate. Then [open; the authors' code tests each band alone and removes the first
   band of the most frequent flipped label]:

   * the candidate **breaks the decision** (rule above): it is the output, the image is
     done;
   * else, if the removal lowered the confidence of ``y0`` by more than ``tau`` below its
     current value (``c0`` at the start), the band **stays removed** (a trigger spread over
     several bands is taken away band by band until the decision breaks) and the current
     confidence becomes the candidate's;
   * else the band is put back (it is image content).

3. An image whose decision neither stage broke is returned **unchanged** [code: "both
   stages failed - returning original image"]: a clean image whose decision is stable
   keeps its accuracy; what Lite-BD changes is what a cheap transformation can break.

Queries per image: 2 + at most ``min(band_queries, n_bands - keep_low)`` (9 by default).
Deterministic (the authors' "random" padding is cropped away again before the
super-resolution, so it changes nothing; detox draws no random numbers); results do not
depend on the batch size.

**Settings and their sources.** [paper] the two stages, their order and the band-by-band
query search; [code] the authors' script (down-scaling by 0.75, the default of their
functions; their script passes 0.5, which on detox's smoke-scale victim breaks the
decision of ~6% of clean images against ~0.2% at 0.75, for the same BadNets ASR; plain
bilinear down-scaling; ``transition = 0.08``; unsharp recovery 0.5; "stage 1 if it
changed the label, else stage 2 if it did, else the original"); [open] chosen here: the
classical SR instead of SwinIR (offline), ``sr_iters = 3``, ``n_bands = 8`` (the code's 50
rings are 0.45 frequency units wide on 32 x 32 images, narrower than their own ramps),
``keep_low = 1``, the confidence margin ``tau = 0.5`` of the break rule, the cumulative
high-to-low search with its keep rule and the query budget, reflect padding of the box
blur. **Simplified**: the authors' stage 2 counts a band as a trigger carrier when the
label leaves the attack's *target* label, which a deployed defense does not know; detox
uses the label before the defense. Their per-image Python loops (numpy FFT per channel)
are one batched torch pipeline here.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import torch
import torch.nn.functional as F

from detox.config import hp
from detox.defenses.purifiers.base import PURIFIERS, Purifier
from detox.errors import ConfigError


@dataclasses.dataclass
class LiteBDConfig:
    scale: float = hp(
        0.75,
        "fraction of the side",
        "[code] the functions' default 0.75 (the script passes 0.5)",
        "stage-1 down-scaling factor",
        range="(0, 1)",
    )
    antialias: bool = hp(
        False, "", "[code] plain bilinear", "antialiased bilinear down-scaling (stage 1, IBP)"
    )
    sr_iters: int = hp(
        3,
        "iterations",
        "[open] classical SR (paper: SwinIR / Real-ESRGAN, not available offline)",
        "iterative back-projection steps after bicubic up-scaling",
        range="[0, inf)",
    )
    n_bands: int = hp(
        8, "rings", "[open]; [code] 50", "radial frequency bands of stage 2", range="[2, inf)"
    )
    keep_low: int = hp(
        1,
        "bands",
        "[open]",
        "lowest bands never removed (band 0 holds the mean colour)",
        range="[1, inf)",
    )
    transition: float = hp(
        0.08,
        "normalised radius",
        "[code] 0.08",
        "width of the linear ramp at each band edge (0: hard edges)",
        range="[0, 1]",
    )
    tau: float = hp(
        0.5,
        "softmax probability",
        "[open]",
        "a query breaks the decision when the label changes and the original label's "
        "confidence fell by more than this; a band stays removed when its removal lowers "
        "that confidence by more than this",
        range="(0, 1)",
    )
    band_queries: int | None = hp(
        None,
        "queries per image",
        "[open]",
        "stage-2 query budget (None: every removable band once)",
        range="[1, inf)",
    )
    sharpen: float = hp(
        0.5,
        "amount",
        "[code] unsharp recovery 0.5",
        "unsharp masking of band-filtered images (3x3 box blur); 0: none",
        range="[0, inf)",
    )
    batch_size: int = hp(256, "images per chunk", range="[1, inf)")
    seed: int = hp(0, "seed", help="unused (deterministic); kept for the purifier interface")

    PRESETS: typing.ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {},
        "quick": {},
        "smoke": {},
    }

    def validate(self) -> None:
        """What no declared range says (each field's range: ``hp``)."""
        if self.keep_low >= self.n_bands:
            raise ConfigError(
                f"keep_low={self.keep_low}: leaves no band of n_bands={self.n_bands} to filter "
                "(expected keep_low < n_bands)"
            )


# ---------------------------------------------------------------------------------------
# building blocks


def down_up(x: torch.Tensor, scale: float, sr_iters: int, antialias: bool = False) -> torch.Tensor:
    """Stage 1: down-scale by ``scale`` (bilinear), super-resolve back to the input size
    (bicubic, then ``sr_iters`` iterative back-projection steps), clip to [0, 1]."""
    h, w = x.shape[-2:]
    size = (int(h * scale), int(w * scale))
    if min(size) < 1:
        raise ConfigError(f"scale={scale}: down-scales {h}x{w} images to nothing")

    def down(z: torch.Tensor) -> torch.Tensor:
        return F.interpolate(
            z, size=size, mode="bilinear", align_corners=False, antialias=antialias
        )

    def up(z: torch.Tensor) -> torch.Tensor:
        return F.interpolate(z, size=(h, w), mode="bicubic", align_corners=False)

    lr = down(x)
    sr = up(lr)
    for _ in range(int(sr_iters)):
        sr = sr + up(lr - down(sr))
    return sr.clamp(0.0, 1.0)


def band_weights(
    h: int, w: int, n_bands: int, transition: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The (n_bands, h, w // 2 + 1) weights of the radial bands on ``rfft2``'s grid; they
    sum to 1 at every frequency (see the module docstring)."""
    fy = torch.fft.fftfreq(h, d=1.0 / h, dtype=torch.float64)
    fx = torch.fft.rfftfreq(w, d=1.0 / w, dtype=torch.float64)
    r = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) / ((h // 2) ** 2 + (w // 2) ** 2) ** 0.5

    def step(edge: float) -> torch.Tensor:  # 1 below the edge, 0 above it
        if transition > 0:
            return ((edge - r) / transition + 0.5).clamp(0.0, 1.0)
        return (r < edge).double()

    below = [torch.zeros_like(r)]  # S at the edges 0, 1/n, ..., 1 (0 and 1 held fixed)
    below += [step(k / n_bands) for k in range(1, n_bands)]
    below += [torch.ones_like(r)]
    weights = torch.stack([below[k + 1] - below[k] for k in range(n_bands)])
    return weights.float().to(device)


def frequency_bands(x: torch.Tensor, n_bands: int, transition: float) -> torch.Tensor:
    """``x`` (B, C, H, W) split into its radial frequency bands: (B, n_bands, C, H, W),
    band 0 the lowest; they sum back to ``x`` (up to float rounding)."""
    h, w = x.shape[-2:]
    wts = band_weights(h, w, n_bands, transition, x.device)  # (n, H, W//2+1)
    spec = torch.fft.rfft2(x.float())  # (B, C, H, W//2+1)
    return torch.fft.irfft2(spec[:, None] * wts[None, :, None], s=(h, w))


def unsharp(x: torch.Tensor, amount: float) -> torch.Tensor:
    """``x + amount * (x - box3(x))`` (3x3 box blur, reflect padding), clipped to [0, 1]."""
    if amount == 0:
        return x
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    return (x + amount * (x - blur)).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------
# the purifier


@PURIFIERS.register("lite-bd", "litebd")
class LiteBD(Purifier):
    """Down-up scaling, then query-guided band-by-band frequency filtering (module doc).

    ``stats`` counts, over every batch purified: the images whose output is stage 1's
    (``stage1``) or stage 2's (``stage2``), those returned unchanged, and the victim's
    queries (images sent to it)."""

    name = "lite-bd"
    Config = LiteBDConfig
    needs_model = True

    def __init__(self, config: Any | None = None) -> None:
        super().__init__(config)
        # images changed by stage 1 / by stage 2 / returned unchanged, and victim queries
        self.stats = {"stage1": 0, "stage2": 0, "unchanged": 0, "queries": 0}

    @torch.no_grad()
    def _probs(self, z: torch.Tensor) -> torch.Tensor:
        self.stats["queries"] += len(z)
        return self.victim(z).float().softmax(1)

    @torch.no_grad()
    def _purify_batch(self, x: torch.Tensor, seed: int, start_index: int) -> torch.Tensor:
        if self.victim is None:
            raise ConfigError(
                f"purifier {self.name!r} queries the victim: call prepare(ctx) with a "
                "DefenseContext that holds the model first"
            )
        cfg = self.config
        b = len(x)
        rows = torch.arange(b, device=x.device)
        p0 = self._probs(x)
        y0 = p0.argmax(1)
        out = x.clone()

        # stage 1: down-up scaling; the output where it breaks the decision
        sr = down_up(x, cfg.scale, cfg.sr_iters, cfg.antialias)
        conf0 = p0[rows, y0]
        p1 = self._probs(sr)
        flip1 = (p1.argmax(1) != y0) & (conf0 - p1[rows, y0] > cfg.tau)
        out[flip1] = sr[flip1]
        self.stats["stage1"] += int(flip1.sum())

        # stage 2: bands from high to low on the original image, where stage 1 did nothing
        active = ~flip1
        bands = frequency_bands(x, cfg.n_bands, cfg.transition)  # (B, n, C, H, W)
        keep = torch.ones(b, cfg.n_bands, device=x.device)  # 1: band kept
        conf = conf0.clone()
        removable = range(cfg.n_bands - 1, cfg.keep_low - 1, -1)
        budget = cfg.band_queries if cfg.band_queries is not None else len(removable)
        flip2 = torch.zeros(b, dtype=torch.bool, device=x.device)
        for k in list(removable)[:budget]:
            idx = active.nonzero().flatten()
            if len(idx) == 0:
                break
            trial = keep[idx].clone()
            trial[:, k] = 0.0
            cand = torch.einsum("bn,bnchw->bchw", trial, bands[idx]).clamp(0.0, 1.0)
            cand = unsharp(cand, cfg.sharpen)
            p = self._probs(cand)
            c = p[torch.arange(len(idx), device=x.device), y0[idx]]
            flipped = (p.argmax(1) != y0[idx]) & (conf0[idx] - c > cfg.tau)
            dropped = ~flipped & (conf[idx] - c > cfg.tau)
            done = idx[flipped]
            out[done] = cand[flipped]
            flip2[done] = True
            active[done] = False
            kept_out = idx[dropped]
            keep[kept_out, k] = 0.0
            conf[kept_out] = c[dropped]
        self.stats["stage2"] += int(flip2.sum())
        self.stats["unchanged"] += int(b - flip1.sum() - flip2.sum())
        return out
