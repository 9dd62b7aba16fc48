"""Small batched tensor operations shared by the attacks (no per-image loops)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_blur(x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), reflect padding, radius ceil(3 sigma).

    ``sigma`` is one value or one per image (shape (B,)); all images are blurred by one
    grouped convolution per axis.
    """
    b, c, h, w = x.shape
    s = torch.as_tensor(sigma, dtype=torch.float64).flatten()
    if s.numel() == 1:
        s = s.expand(b)
    if s.numel() != b:
        raise ValueError(f"gaussian_blur: {s.numel()} sigmas for {b} images")
    if float(s.max()) <= 0:
        return x.clone()
    r = max(1, math.ceil(3.0 * float(s.max())))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t[None, :] / s.clamp_min(1e-6)[:, None]) ** 2)
    k = (k / k.sum(dim=1, keepdim=True)).to(x.device, x.dtype)  # B x (2r + 1)
    k = k.repeat_interleave(c, dim=0)  # one kernel per (image, channel)
    y = x.reshape(1, b * c, h, w)
    mode = "reflect" if r < min(h, w) else "replicate"
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode=mode), k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode=mode), k.view(b * c, 1, -1, 1), groups=b * c)
    return y.reshape(b, c, h, w)


def dct_matrix(n: int, dtype=torch.float64) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (n x n): ``dct2(X) = D @ X @ D.T`` (as ``cv2.dct``),
    ``X = D.T @ Y @ D``."""
    k = torch.arange(n, dtype=dtype).unsqueeze(1)
    i = torch.arange(n, dtype=dtype).unsqueeze(0)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


#: RGB -> YCrCb on the 0-255 scale as OpenCV's ``COLOR_RGB2YCrCb`` (offset 128 on Cr, Cb):
#: Y = .299 R + .587 G + .114 B, Cr = .713 (R - Y) + 128, Cb = .564 (B - Y) + 128.
_KR, _KG, _KB = 0.299, 0.587, 0.114
RGB2YCRCB = torch.tensor(
    [
        [_KR, _KG, _KB],
        [0.713 * (1 - _KR), -0.713 * _KG, -0.713 * _KB],
        [-0.564 * _KR, -0.564 * _KG, 0.564 * (1 - _KB)],
    ],
    dtype=torch.float64,
)
YCRCB_OFFSET = torch.tensor([0.0, 128.0, 128.0], dtype=torch.float64)


def rgb_to_ycrcb(x255: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB on 0-255 -> YCrCb on 0-255 (OpenCV convention)."""
    m = RGB2YCRCB.to(x255.device, x255.dtype)
    off = YCRCB_OFFSET.to(x255.device, x255.dtype).view(1, 3, 1, 1)
    return torch.einsum("oc,bchw->bohw", m, x255) + off


def ycrcb_to_rgb(y255: torch.Tensor) -> torch.Tensor:
    m = torch.linalg.inv(RGB2YCRCB).to(y255.device, y255.dtype)
    off = YCRCB_OFFSET.to(y255.device, y255.dtype).view(1, 3, 1, 1)
    return torch.einsum("oc,bchw->bohw", m, y255 - off)


def block_dct(x: torch.Tensor, d: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """2-D DCT (or inverse) on non-overlapping ``n x n`` blocks of (B, C, H, W); H and W
    must be multiples of n. Two batched matmuls with the DCT matrix ``d``."""
    n = d.shape[0]
    b, c, h, w = x.shape
    blocks = x.reshape(b, c, h // n, n, w // n, n).transpose(3, 4)  # b c hb wb n n
    out = d.T @ blocks @ d if inverse else d @ blocks @ d.T
    return out.transpose(3, 4).reshape(b, c, h, w)


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A seeded permutation of range(n) without fixed points (n >= 2)."""
    perm = torch.randperm(n, generator=generator)
    out = torch.empty_like(perm)
    out[perm] = perm.roll(-1)
    return out


class ImageTable:
    """Per-image replacements found by content: LC's and HTBD's perturbed training images.

    :meth:`Attack._trigger` receives float images and no index, so an attack whose
    poisoned training images are optimised one by one keeps them here, keyed by the exact
    uint8 bytes of the clean image each was made from (``round(255 x)``, exact for images
    that came from uint8). Identical clean images share the first replacement."""

    def __init__(self, clean_uint8: torch.Tensor, replaced_uint8: torch.Tensor) -> None:
        if clean_uint8.shape != replaced_uint8.shape:
            raise ValueError(
                f"ImageTable: {tuple(clean_uint8.shape)} clean images but "
                f"{tuple(replaced_uint8.shape)} replacements"
            )
        self.replaced = replaced_uint8
        self._rows: dict[bytes, int] = {}
        for i, img in enumerate(clean_uint8):
            self._rows.setdefault(img.numpy().tobytes(), i)

    def __len__(self) -> int:
        return len(self.replaced)

    def lookup(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For float images ``x`` in [0, 1]: ``(out, found)``, each image replaced (as a
        float on ``x``'s device) where its uint8 bytes equal a clean image of the table,
        else kept (``found`` False)."""
        q = x.detach().mul(255.0).round_().clamp_(0, 255).to("cpu", torch.uint8)
        pos = torch.tensor(
            [self._rows.get(img.numpy().tobytes(), -1) for img in q], dtype=torch.int64
        )
        found = pos >= 0
        out = x.clone()
        if bool(found.any()):
            rep = self.replaced[pos[found]].to(x.device, x.dtype).div_(255.0)
            out[found.to(x.device)] = rep
        return out, found


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """For a block that optimises inputs through ``model`` (PGD, feature collision, a
    patch): its trainable parameters stop requiring gradients, and are restored on exit,
    error or not."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)
