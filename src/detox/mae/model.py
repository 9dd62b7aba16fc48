"""detox's small masked autoencoder (MAE; He et al., "Masked Autoencoders Are Scalable
Vision Learners", CVPR 2022), sized for 32x32 images.

BDMAE (the ``bdmae`` purifier) restores masked image regions with an MAE. Its authors use
Meta's ImageNet MAE (ViT-Base/Large, 224x224 inputs, patch 16), which detox cannot
download; detox trains its own small one per dataset instead (:mod:`detox.mae.train`,
shipped as ``detox/weights/mae-<dataset>-32``, found by :func:`detox.mae.packaged_mae`).

The network (written for detox, following the MAE recipe):

* **tokens**: the image (``[0, 1]``, normalised with the config's ``mean`` / ``std``) is cut
  into ``patch_size x patch_size`` patches (``L = (image_size / patch_size)^2`` tokens),
  each embedded linearly, plus fixed 2-D sine-cosine position embeddings (no class token);
* **encoder**: pre-norm ViT blocks over the *visible* tokens only. Images of one batch may
  hide different numbers of tokens: visible tokens are gathered first (stable order), the
  batch is padded to the largest visible count, and padded keys are excluded from attention
  (so an image's encoding does not depend on the others);
* **decoder**: the encodings projected to ``decoder_dim``, a learned mask token at every
  hidden position, position embeddings again, a few ViT blocks and a linear head that
  predicts each patch's pixels in ``[0, 1]`` (no per-patch normalisation of the target, so
  the output is an image);
* :meth:`MAE.restore` returns the input with the hidden tokens' pixels replaced by the
  reconstruction (clipped to ``[0, 1]``) and the visible pixels kept bit for bit.

A mask is a bool tensor (B, L), ``True`` = hidden, tokens in row-major order.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detox.config import hp
from detox.errors import ConfigError


@dataclasses.dataclass
class MAEConfig:
    """The network's shape and input normalisation (saved in ``config.json``)."""

    image_size: int = hp(32, "pixels", "[open]", "square input side", range="[1, inf)")
    channels: int = hp(3, "channels", "[open]", "input channels", range="[1, inf)")
    patch_size: int = hp(
        4, "pixels", "[open]; [paper] 16 on 224x224", "token side", range="[1, inf)"
    )
    dim: int = hp(128, "features", "[open]", "encoder width", range="[8, inf)")
    depth: int = hp(4, "blocks", "[open]", "encoder blocks", range="[1, inf)")
    heads: int = hp(4, "heads", "[open]", "encoder attention heads", range="[1, inf)")
    decoder_dim: int = hp(128, "features", "[open]", "decoder width", range="[8, inf)")
    decoder_depth: int = hp(2, "blocks", "[open]", "decoder blocks", range="[1, inf)")
    decoder_heads: int = hp(4, "heads", "[open]", "decoder attention heads", range="[1, inf)")
    mlp_ratio: float = hp(4.0, "x width", "[MAE]", "MLP hidden size", range="(0, inf)")
    mean: tuple[float, ...] = hp(
        (0.5, 0.5, 0.5), "per channel", "[open]", "input normalisation mean", range="[0, 1]"
    )
    std: tuple[float, ...] = hp(
        (0.25, 0.25, 0.25), "per channel", "[open]", "input normalisation std", range="(0, inf)"
    )

    PRESETS: typing.ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {},
        "quick": {},
        "smoke": {"dim": 32, "depth": 1, "heads": 2, "decoder_dim": 32, "decoder_depth": 1},
    }

    def validate(self) -> None:
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"patch_size={self.patch_size} must divide image_size={self.image_size}"
            )
        if self.dim % self.heads:
            raise ConfigError(f"heads={self.heads} must divide dim={self.dim}")
        if self.decoder_dim % self.decoder_heads:
            raise ConfigError(
                f"decoder_heads={self.decoder_heads} must divide decoder_dim={self.decoder_dim}"
            )
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(f"mean and std need {self.channels} values (one per channel)")

    @property
    def grid(self) -> int:
        """Tokens per side."""
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings (grid*grid, dim), row-major: half of the
    features encode the row, half the column (``dim`` a multiple of 4)."""
    if dim % 4:
        raise ConfigError(f"embedding width {dim} must be a multiple of 4")
    quarter = dim // 4
    freq = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    pos = torch.arange(grid, dtype=torch.float64)
    ang = pos[:, None] * freq[None, :]  # (grid, quarter)
    one = torch.cat([ang.sin(), ang.cos()], 1)  # (grid, dim/2)
    rows = one[:, None, :].expand(grid, grid, dim // 2)
    cols = one[None, :, :].expand(grid, grid, dim // 2)
    return torch.cat([rows, cols], -1).reshape(grid * grid, dim).float()


class Block(nn.Module):
    """Pre-norm transformer block: attention (optionally over some keys only) + MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """``keys``: bool (B, 1, 1, N), True where a key may be attended to."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=keys
        )
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class MAE(nn.Module):
    """The masked autoencoder. See the module docstring."""

    def __init__(self, config: MAEConfig | None = None, seed: int = 0) -> None:
        super().__init__()
        cfg = config if config is not None else MAEConfig()
        cfg.validate()
        self.config = cfg
        p, c = cfg.patch_size, cfg.channels
        self.embed = nn.Linear(p * p * c, cfg.dim)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.decoder_embed = nn.Linear(cfg.dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        self.decoder_blocks = nn.ModuleList(
            Block(cfg.decoder_dim, cfg.decoder_heads, cfg.mlp_ratio)
            for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(cfg.decoder_dim)
        self.head = nn.Linear(cfg.decoder_dim, p * p * c)
        self.register_buffer("pos", sincos_2d(cfg.dim, cfg.grid), persistent=False)
        self.register_buffer("decoder_pos", sincos_2d(cfg.decoder_dim, cfg.grid), persistent=False)
        self.register_buffer(
            "mean", torch.tensor(cfg.mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(cfg.std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self._init_weights(seed)

    def _init_weights(self, seed: int) -> None:
        """MAE's initialisation (xavier-uniform linears, zero biases, N(0, 0.02) mask
        token), from ``seed`` (never the global generator)."""
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    fan_in, fan_out = m.weight.shape[1], m.weight.shape[0]
                    bound = math.sqrt(6.0 / (fan_in + fan_out))
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 2 * bound - bound)
                    m.bias.zero_()
                elif isinstance(m, nn.LayerNorm):
                    m.weight.fill_(1.0)
                    m.bias.zero_()
            self.mask_token.copy_(torch.randn(self.mask_token.shape, generator=g) * 0.02)

    # -- shapes ------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, p*p*C), tokens row-major, pixels (row, col, channel)."""
        b, c, h, w = x.shape
        p = self.config.patch_size
        x = x.reshape(b, c, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`patchify`."""
        cfg = self.config
        b, p, g, c = t.shape[0], cfg.patch_size, cfg.grid, cfg.channels
        t = t.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return t.reshape(b, c, g * p, g * p)

    def pixel_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Token mask (B, L) -> pixel mask (B, 1, H, W) of the same dtype."""
        g, p = self.config.grid, self.config.patch_size
        m = mask.reshape(-1, 1, g, g)
        return m.repeat_interleave(p, 2).repeat_interleave(p, 3)

    def token_mask_from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel mask (B, [1,] H, W) -> token mask (B, L): a token is hidden if any of its
        pixels is."""
        m = pixels.reshape(pixels.shape[0], 1, *pixels.shape[-2:]).float()
        p = self.config.patch_size
        return (F.max_pool2d(m, p) > 0).flatten(1)

    def random_mask(
        self,
        n: int,
        ratio: float = 0.75,
        generators: Sequence[torch.Generator] | torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """``n`` random masks hiding ``L - int(L * (1 - ratio))`` tokens each (MAE's count),
        one generator per row (or one shared generator, drawn row by row)."""
        L = self.num_tokens
        keep = int(L * (1.0 - ratio))
        if generators is None or isinstance(generators, torch.Generator):
            gens = [generators] * n
        else:
            gens = list(generators)
            if len(gens) != n:
                raise ValueError(f"random_mask: {len(gens)} generators for {n} masks")
        noise = torch.stack([torch.rand(L, generator=g) for g in gens]) if n else torch.zeros(0, L)
        order = noise.argsort(1)
        mask = torch.ones(n, L, dtype=torch.bool)
        mask.scatter_(1, order[:, :keep], False)
        return mask.to(device)

    # -- network -----------------------------------------------------------------------
    def _check(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1:] != (cfg.channels, cfg.image_size, cfg.image_size):
            raise ConfigError(
                f"MAE: expected images (B, {cfg.channels}, {cfg.image_size}, "
                f"{cfg.image_size}), got {tuple(x.shape)}"
            )
        mask = mask.to(x.device).bool().reshape(x.shape[0], -1)
        if mask.shape[1] != cfg.num_tokens:
            raise ConfigError(f"MAE: mask has {mask.shape[1]} tokens, expected {cfg.num_tokens}")
        if bool((~mask).sum(1).eq(0).any()):
            raise ConfigError("MAE: a mask hides every token (nothing left to restore from)")
        return mask

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predicted pixels of every patch (B, L, p*p*C), for images ``x`` in [0, 1] with
        the tokens of ``mask`` hidden from the encoder."""
        mask = self._check(x, mask)
        b, L = mask.shape
        tokens = self.embed(self.patchify((x - self.mean) / self.std)) + self.pos
        order = mask.to(torch.uint8).argsort(dim=1, stable=True)  # visible first, in place order
        count = (~mask).sum(1)
        k = int(count.max())
        idx = order[:, :k]
        valid = torch.arange(k, device=x.device)[None, :] < count[:, None]  # (B, k)
        h = tokens.gather(1, idx[..., None].expand(-1, -1, tokens.shape[-1]))
        keys = None if bool(valid.all()) else valid[:, None, None, :]
        for blk in self.blocks:
            h = blk(h, keys)
        h = self.decoder_embed(self.norm(h))
        h = torch.where(valid[..., None], h, self.mask_token.to(h.dtype))
        full = self.mask_token.to(h.dtype).expand(b, L, -1).clone()
        full = full.scatter(1, idx[..., None].expand(-1, -1, full.shape[-1]), h)
        full = full + self.decoder_pos
        for blk in self.decoder_blocks:
            full = blk(full)
        return self.head(self.decoder_norm(full))

    def loss(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MAE's loss: mean squared error of the hidden patches' pixels ([0, 1] scale)."""
        mask = self._check(x, mask)
        per_token = (self(x, mask) - self.patchify(x)).pow(2).mean(-1)
        m = mask.to(per_token.dtype)
        return (per_token * m).sum() / m.sum().clamp_min(1.0)

    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The decoder's whole image (B, C, H, W) in [0, 1] (visible patches too)."""
        return self.unpatchify(self(x, mask)).clamp(0.0, 1.0)

    @torch.no_grad()
    def restore(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` with the hidden tokens' pixels replaced by the reconstruction; the visible
        pixels are returned exactly as given."""
        mask = self._check(x, mask)
        rec = self.reconstruct(x, mask).to(x.dtype)
        return torch.where(self.pixel_mask(mask), rec, x)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.config),
            "parameters": self.num_parameters(),
            "tokens": self.num_tokens,
        }
