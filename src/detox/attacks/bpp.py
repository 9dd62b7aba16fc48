"""BppAttack (Wang, Zhai & Ma, "BppAttack: Stealthy and Efficient Trojan Attacks against
Deep Neural Networks via Image Quantization and Contrastive Adversarial Learning", CVPR
2022): colour-depth squeezing as the trigger, dirty label.

Trigger [paper/code]: each channel quantised to ``squeeze_num`` = 8 levels,
``round(x * (L - 1)) / (L - 1)``; optionally with Floyd-Steinberg error diffusion
(``dithering``; weights 7/16, 3/16, 5/16, 1/16 on the 0-255 scale, as the authors' numba
code). Dithering is vectorised over the batch and channels; it loops over columns, and
diffuses each finished row to the next in one vectorised step.

Negative examples [code]: ``neg_ratio`` x (training-set size) other training images get the
squeezing *residual of another image* added (``x + (squeeze(x') - x')``, as the authors'
``residual_list_train``) and keep their true labels; :func:`~detox.attacks.poison` records
them as ``extra``. The contrastive adversarial (PGD) part of the paper needs a model in the
loop and is not part of data poisoning here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from detox.attacks.base import Attack, AttackConfig, hp, register
from detox.attacks.ops import derangement


@dataclass
class BPPConfig(AttackConfig):
    squeeze_num: int = hp(8, "levels per channel", "[paper] squeeze to 8 levels", range="[2, 256]")
    dithering: bool = hp(False, "", "[paper]", "optional Floyd-Steinberg dithering")
    neg_ratio: float = hp(
        0.1, "fraction of the training set", "[code] negative ratio 0.1", range="[0, 1]"
    )


def squeeze(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Quantise [0, 1] images to ``levels`` evenly spaced values."""
    q = levels - 1
    return (x * q).round_().div_(q)


def floyd_steinberg(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Floyd-Steinberg dithering of (B, C, H, W) [0, 1] images to ``levels`` values.

    The same arithmetic as the authors' code (round to the nearest level, diffuse the error
    7/16 right, 3/16 down-left, 5/16 down, 1/16 down-right), in level units so that the
    quantiser is a plain ``round``, in float64 as the authors' code (error diffusion is
    chaotic: float32 rounding flips a few pixels and the flips propagate). The image is laid out (H, W, B, C) so that each step
    touches one contiguous (B, C) slice; a finished row's errors reach the next row in one
    vectorised step.
    """
    q = levels - 1
    img = (x.to(torch.float64) * q).permute(2, 3, 0, 1).contiguous()  # H W B C, level units
    h, w = img.shape[:2]
    out = torch.empty_like(img)
    err = torch.empty_like(img[0])  # W B C
    nxt = img[0].clone()
    for yy in range(h):
        carry = None
        for xx in range(w):
            v = nxt[xx] if carry is None else nxt[xx].add_(carry)
            new = torch.round(v, out=out[yy, xx])
            carry = torch.sub(v, new, out=err[xx]).mul(7.0 / 16.0)
        if yy + 1 < h:
            nxt = img[yy + 1].clone()
            nxt.add_(err, alpha=5.0 / 16.0)
            nxt[:-1].add_(err[1:], alpha=3.0 / 16.0)
            nxt[1:].add_(err[:-1], alpha=1.0 / 16.0)
    return out.div_(q).permute(2, 3, 0, 1).to(x.dtype)


@register
class BPP(Attack):
    name = "bpp"
    aliases = ("bppattack",)
    Config = BPPConfig
    config: BPPConfig
    extra_kind = "negative"

    def _trigger(self, x, *, train, generator):
        if self.config.dithering:
            return floyd_steinberg(x, self.config.squeeze_num)
        return squeeze(x, self.config.squeeze_num)

    def n_extra(self, n_poisoned, n_total):
        return int(math.floor(self.config.neg_ratio * n_total + 1e-9))

    def _extra(self, x, *, generator):
        b = x.shape[0]
        if b >= 2:
            other = x[derangement(b, generator).to(x.device)]
        else:  # no other image in the batch: a seeded random one
            other = torch.rand(x.shape, generator=generator).to(x.device, x.dtype)
        return x + (self._trigger(other, train=True, generator=generator) - other)
