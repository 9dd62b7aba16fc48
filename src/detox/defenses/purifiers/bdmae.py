"""BDMAE (Sun, Pang, Chen, Ling, "Mask and Restore: Blind Backdoor Defense at Test Time
with Masked Autoencoder", CVPR 2023): find the trigger by masking and restoring with an MAE
while watching the classifier's hard labels, then restore the suspected tokens.

Model-aware (``needs_model``): it queries the victim (hard labels only: a black-box
defense). For every input ``x`` (float [0, 1]), with ``y0`` the victim's label of ``x`` and
``L`` the MAE's tokens:

1. **Trigger scores** (``outer x inner`` random masks, each hiding ``mask_ratio`` of the
   tokens; the MAE restores the hidden tokens, the visible pixels stay as they are):

   * *label score* ``S_l(t)``: the fraction of all masks that hide token ``t`` **and** make
     the victim's label of the restoration differ from ``y0``;
   * *image score* ``S_i(t)``: per outer round, the restorations of its ``inner`` masks are
     averaged where each hid the pixel (pixels no mask hid keep ``x``); ``1 - SSIM(x,
     average)`` (SSIM map: Gaussian window 11, sigma 1.5, replicate padding, data range 1,
     mean over channels, as the authors' ``pytorch_ssim``) averaged over the token's
     pixels, then over the outer rounds.

2. **Topology-aware refinement**, ``refine_steps`` times for each score ``S`` separately
   (both in one batch): ``n`` = the number of tokens with ``S_i >= image_threshold`` (image
   score) or ``int(mean(S_l) * L)`` (label score), fixed before the loop. Each step takes
   the top-``n`` tokens ``T``, grows a connected sample ``R`` of ``max(1, n // 2)`` of them
   (a seed drawn with weight ``u * S``, ``u`` uniform, then one token at a time by the
   largest ``u * (S + topo * [4-neighbour of R])`` among ``T``), restores ``R`` with the
   MAE and asks the victim: if the label stays ``y0``, ``S -= delta`` on ``R`` and
   ``S += delta`` on ``T \\ R``; if it changes, the opposite.

3. **Adaptive restoration.** ``S = alpha S_i + (1 - alpha) S_l``. With the score
   thresholds ``tau_k`` (``restore_thresholds``, decreasing), the thresholds are raised
   together (``tau_k <- 1 - (1 - tau_k) 0.99^c``, the smallest ``c <= 200``) until the
   largest mask ``S >= tau_last`` hides less than ``max_masked`` of the tokens. Each mask
   ``S >= tau_k`` is restored by the MAE; the output is ``x`` outside the largest mask and
   inside it the mean of the restorations whose mask hid the pixel. The classifier is then
   queried on the output (by the caller: this is a purifier).

Per image: ``outer * inner + 2 * refine_steps + len(restore_thresholds)`` MAE restorations
and ``1 + outer * inner + 2 * refine_steps`` victim queries (``paper``: 50 and 46).

**The MAE.** The authors restore with Meta's ImageNet MAE (ViT-Base or -Large, 224x224
inputs, 14x14 tokens of 16 pixels: CIFAR-10 images are upsampled 7x, so a token covers
about 2.3x2.3 original pixels). detox cannot download it, so it trains its **own small MAE
per dataset** on 32x32 images (:mod:`detox.mae`, patch 4: 8x8 tokens of 4x4 pixels,
~1.2M parameters, trained minutes on a CPU; ``mae-README.md`` in ``detox/weights``):
``mae`` (a folder written by ``detox.mae.save_mae``) defaults to the one shipped for the
dataset (``use_dataset_defaults``). Its restorations are blurrier than the authors' MAE's,
and its tokens coarser.

**Departures from the authors' code** (``defense/BDMAE.py``), all to make an image's
result depend on that image only (not on the batch): random masks are drawn per image
(the code shares one mask across the batch); the refinement size ``n`` and the final mask
sizes are per image (the code averages them over the batch); the refinement seed token is
drawn among the top-``n`` tokens (the code may pick any token, and selects one token even
when ``n // 2 = 0``); images with ``n = 0`` are not refined; the image score is averaged
over a token's pixels (the code samples one pixel per token, nearest-neighbour). Ties in
rankings go to the lower token index. Randomness: one generator per image, seeded from
``(seed, start_index + row)``, so results do not depend on the batch size.

**Presets**: ``paper`` ([code] defaults of ``defense/BDMAE.py``: 5 x 5 masks at 0.75, 10
refinement steps of 0.05, topology weight 0.5, alpha 0.5, image threshold 0.2, score
thresholds 0.6 / 0.55 / 0.5 / 0.45 / 0.4, at most 25% of tokens restored); ``quick``
(2 x 4 masks, 4 refinement steps: 17 restorations per image, for a CPU); ``smoke``
(1 x 4 masks, 2 refinement steps, 3 thresholds: 11 restorations, for tests).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

import torch
import torch.nn.functional as F

from detox.config import hp
from detox.defenses.purifiers.base import PURIFIERS, Purifier
from detox.errors import ConfigError
from detox.utils.seed import derive_seed


@dataclasses.dataclass
class BDMAEConfig:
    """BDMAE settings (scores are in [0, 1] before refinement)."""

    mae: str | None = hp(
        None, "folder", "[open] detox's own MAE", "MAE folder (default: the dataset's shipped one)"
    )
    mask_ratio: float = hp(
        0.75, "fraction of tokens", "[paper, code]", "hidden per random mask", range="(0, 1)"
    )
    outer: int = hp(5, "rounds", "[code] rp_init_out", "rounds of random masks", range="[1, inf)")
    inner: int = hp(
        5, "masks per round", "[code] rp_init_in", "masks averaged per round", range="[1, inf)"
    )
    refine_steps: int = hp(
        10, "steps", "[code] rp_refine", "topology-aware refinement steps", range="[0, inf)"
    )
    refine_delta: float = hp(
        0.05, "score", "[code]", "score change per refinement step", range="[0, inf)"
    )
    topo: float = hp(
        0.5, "weight", "[code] topo_po", "preference for neighbours when growing", range="[0, inf)"
    )
    alpha: float = hp(0.5, "weight", "[code]", "weight of the image score", range="[0, 1]")
    image_threshold: float = hp(
        0.2, "score", "[code]", "image-score level that sizes its refinement", range="[0, 1]"
    )
    restore_thresholds: tuple[float, ...] = hp(
        (0.6, 0.55, 0.5, 0.45, 0.4),
        "scores, decreasing",
        "[code] 1 - (0.4 + 0.05 k)",
        "one restoration per threshold",
        range="(0, 1]",
    )
    max_masked: float = hp(
        0.25, "fraction of tokens", "[code]", "cap of the largest restored mask", range="(0, 1]"
    )
    batch_size: int = hp(64, "images per chunk", range="[1, inf)")
    seed: int = hp(0, "seed", help="mask and sampling seed (per image: seed and position)")

    PRESETS: typing.ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {},
        "quick": {"outer": 2, "inner": 4, "refine_steps": 4},
        "smoke": {
            "outer": 1,
            "inner": 4,
            "refine_steps": 2,
            "restore_thresholds": (0.6, 0.5, 0.4),
        },
    }

    def validate(self) -> None:
        """What no declared range says."""
        t = tuple(self.restore_thresholds)
        if not t or any(a <= b for a, b in zip(t, t[1:])):
            raise ConfigError(
                f"restore_thresholds={t}: expected one or more strictly decreasing scores"
            )


# ---------------------------------------------------------------------------------------
# helpers


def ssim_map(
    x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """SSIM map (B, H, W) of two [0, 1] image batches, mean over channels: Gaussian window,
    replicate padding, ``c1 = 0.01^2``, ``c2 = 0.03^2`` (the authors' ``pytorch_ssim``)."""
    c = x.shape[1]
    r = window // 2
    k = torch.arange(window, device=x.device, dtype=x.dtype) - r
    k = torch.exp(-(k**2) / (2.0 * sigma**2))
    k = k / k.sum()
    kx = k.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    ky = k.view(1, 1, -1, 1).expand(c, 1, -1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t, [r, r, r, r], mode="replicate")
        return F.conv2d(F.conv2d(t, kx, groups=c), ky, groups=c)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean(1)


def grid_adjacency(g: int, device: torch.device) -> torch.Tensor:
    """4-neighbour adjacency (L, L) of a g x g token grid, row-major, float."""
    i = torch.arange(g * g, device=device)
    r, c = i // g, i % g
    dr = (r[:, None] - r[None, :]).abs()
    dc = (c[:, None] - c[None, :]).abs()
    return ((dr + dc) == 1).float()


def top_mask(scores: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Bool (B, L): each row's ``n[b]`` highest scores (ties: lower index first)."""
    order = scores.sort(dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    )
    return rank < n[:, None]


@dataclasses.dataclass
class BDMAEOutput:
    """``x``: purified images [0, 1]; ``score_image`` / ``score_label``: the refined
    scores, ``score``: their combination (B, g, g); ``mask``: the largest restored mask
    (B, g, g) bool; ``label``: the victim's label of the input."""

    x: torch.Tensor
    score_image: torch.Tensor
    score_label: torch.Tensor
    score: torch.Tensor
    mask: torch.Tensor
    label: torch.Tensor


# ---------------------------------------------------------------------------------------
# the purifier


@PURIFIERS.register("bdmae")
class BDMAE(Purifier):
    """BDMAE with detox's own small MAE. See the module docstring."""

    name = "bdmae"
    Config = BDMAEConfig
    Output = BDMAEOutput
    needs_model = True

    def __init__(self, config: BDMAEConfig | None = None, model: Any = None) -> None:
        super().__init__(config)
        self._mae = None
        if model is not None:
            self.set_mae(model)

    # -- the MAE -------------------------------------------------------------------------
    @property
    def mae(self):
        if self._mae is None:
            from detox.mae import load_mae

            if not self.config.mae:
                from detox.data.registry import registered_facts
                from detox.mae import packaged_mae

                shipped = [f.name for f in registered_facts() if packaged_mae(f.name)]
                raise ConfigError(
                    "bdmae needs a masked autoencoder: set mae=PATH (a folder written by "
                    "benchmarks/train_mae.py / detox.mae.save_mae) or pass model=; detox "
                    f"ships one for {', '.join(shipped) or 'no dataset'}"
                )
            self.set_mae(load_mae(self.config.mae, device=self.device))
        return self._mae

    def set_mae(self, mae: Any) -> BDMAE:
        from detox.mae import MAE

        if not isinstance(mae, MAE):
            raise ConfigError(f"bdmae: model= must be a detox.mae.MAE, got {type(mae).__name__}")
        self._mae = mae.to(self.device).eval()
        return self

    def use_dataset_defaults(self, dataset: str | None) -> BDMAE:
        """Without ``mae`` set, use the MAE shipped for ``dataset`` (if any)."""
        if self._mae is None and not self.config.mae:
            from detox.mae import packaged_mae

            self.config.mae = packaged_mae(dataset)
        return self

    def to(self, device: str | torch.device) -> BDMAE:
        super().to(device)
        if self._mae is not None:
            self._mae.to(self.device)
        return self

    def fingerprint(self, model_fingerprint: str | None = None) -> str:
        """As the base class, less the MAE's *path* (its weights and config enter through
        :meth:`_fingerprint_extra`): the same weights give the same key wherever they lie."""
        self.mae  # noqa: B018 - load it while the path is still set
        path, self.config.mae = self.config.mae, None
        try:
            return super().fingerprint(model_fingerprint)
        finally:
            self.config.mae = path

    def _fingerprint_extra(self) -> bytes:
        """The MAE: its config and weights."""
        from detox.utils.fingerprint import state_fingerprint

        m = self.mae
        cfg = json.dumps(dataclasses.asdict(m.config), sort_keys=True)
        return f"mae:{cfg}|{state_fingerprint(m)}".encode()

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        c = self.config
        masks = c.outer * c.inner
        d["mae_restorations_per_image"] = masks + 2 * c.refine_steps + len(c.restore_thresholds)
        d["victim_queries_per_image"] = 1 + masks + 2 * c.refine_steps
        if self._mae is not None:
            d["mae"] = {"source": getattr(self._mae, "source", None), **self._mae.describe()}
        return d

    # -- queries -------------------------------------------------------------------------
    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        victim = self.victim
        if victim is None:
            raise ConfigError("bdmae needs the victim model: call prepare(ctx) first")
        p = next(iter(victim.parameters()), None)
        if p is not None and p.device != x.device:
            victim.to(x.device)
        victim.eval()
        bs = max(1, int(self.config.batch_size)) * 8
        return torch.cat([victim(x[i : i + bs]).argmax(1) for i in range(0, len(x), bs)])

    def _restore(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MAE restorations of ``x`` (N, C, H, W) with token masks (N, L), in chunks."""
        bs = max(1, int(self.config.batch_size)) * 8
        return torch.cat(
            [self.mae.restore(x[i : i + bs], mask[i : i + bs]) for i in range(0, len(x), bs)]
        )

    # -- the method ----------------------------------------------------------------------
    def _run(self, x: torch.Tensor, seed: int, start_index: int) -> BDMAEOutput:
        cfg, mae = self.config, self.mae
        mc = mae.config
        b, c, h, w = x.shape
        if (c, h, w) != (mc.channels, mc.image_size, mc.image_size):
            raise ConfigError(
                f"bdmae: images are {c}x{h}x{w}, the MAE was built for "
                f"{mc.channels}x{mc.image_size}x{mc.image_size}"
            )
        L, g = mc.num_tokens, mc.grid
        if int(L * (1.0 - cfg.mask_ratio)) < 1:
            raise ConfigError(
                f"mask_ratio={cfg.mask_ratio}: hides all {L} tokens of the MAE; lower it"
            )
        gens = [
            torch.Generator().manual_seed(derive_seed(int(seed), "bdmae", start_index + r))
            for r in range(b)
        ]
        with torch.inference_mode():
            y0 = self._labels(x)
            s_img, s_lab = self._scores(x, y0, gens)
            s_img, s_lab = self._refine(x, y0, s_img, s_lab, gens, g)
            score = cfg.alpha * s_img + (1.0 - cfg.alpha) * s_lab
            out, largest = self._final(x, score)
        shape = (b, g, g)
        return BDMAEOutput(
            out,
            s_img.view(shape).float(),
            s_lab.view(shape).float(),
            score.view(shape).float(),
            largest.view(shape),
            y0,
        )

    def _scores(
        self, x: torch.Tensor, y0: torch.Tensor, gens: list[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 1: image and label scores (B, L), float64."""
        cfg, mae = self.config, self.mae
        b, n = len(x), cfg.inner
        L, p, dev = mae.num_tokens, mae.config.patch_size, x.device
        s_img = torch.zeros(b, L, dtype=torch.float64, device=dev)
        changed_count = torch.zeros(b, L, dtype=torch.float64, device=dev)
        work = torch.float64 if dev.type != "mps" else torch.float32
        for _ in range(cfg.outer):
            rows = [g for g in gens for _ in range(n)]  # image-major: image k draws n masks
            mask = mae.random_mask(b * n, cfg.mask_ratio, rows, dev)  # (B*n, L)
            xr = self._restore(x.repeat_interleave(n, 0), mask)
            changed = self._labels(xr).view(b, n) != y0[:, None]
            m = mask.view(b, n, L)
            changed_count += (m & changed[..., None]).sum(1).to(changed_count.dtype)
            pm = mae.pixel_mask(mask).to(x.dtype).view(b, n, 1, *x.shape[2:])
            hits = pm.sum(1)
            avg = (pm * xr.view(b, n, *x.shape[1:])).sum(1) / hits.clamp_min(1.0)
            avg = torch.where(hits > 0, avg, x)
            sim = ssim_map(x.to(work), avg.to(work))  # (B, H, W)
            s_img += (1.0 - F.avg_pool2d(sim[:, None], p)).flatten(1).to(s_img.dtype)
        return s_img / cfg.outer, changed_count / (cfg.outer * n)

    def _refine(
        self,
        x: torch.Tensor,
        y0: torch.Tensor,
        s_img: torch.Tensor,
        s_lab: torch.Tensor,
        gens: list[torch.Generator],
        g: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 2: topology-aware refinement of both scores (stacked: rows 0..B-1 image
        score, B..2B-1 label score)."""
        cfg = self.config
        b, L, dev = len(x), g * g, x.device
        if cfg.refine_steps == 0:
            return s_img, s_lab
        s = torch.cat([s_img, s_lab])  # (2B, L)
        n_top = torch.cat(
            [
                (s_img >= cfg.image_threshold).sum(1),
                (s_lab.mean(1) * L).to(torch.int64),  # int(): toward zero, as the code
            ]
        )
        size = torch.where(n_top > 0, (n_top // 2).clamp_min(1), torch.zeros_like(n_top))
        adj = grid_adjacency(g, dev)
        xx = torch.cat([x, x])
        yy = torch.cat([y0, y0])
        sizes = size.tolist()
        for _ in range(cfg.refine_steps):
            # per image: its image-score draws, then its label-score draws
            draws = [torch.rand(sizes[r], L, generator=gens[r]) for r in range(b)]
            draws += [torch.rand(sizes[b + r], L, generator=gens[r]) for r in range(b)]
            m_max = max(sizes)
            u = torch.zeros(2 * b, max(m_max, 1), L, dtype=torch.float64)
            for r, d in enumerate(draws):
                u[r, : len(d)] = d.to(torch.float64)
            u = u.to(dev)
            top = top_mask(s, n_top)
            region = self._grow(s, top, size, u, adj, m_max)
            xr = self._restore(xx, region)
            same = self._labels(xr) == yy
            beta = torch.where(same, cfg.refine_delta, -cfg.refine_delta).to(s.dtype)
            beta = torch.where(size > 0, beta, torch.zeros_like(beta))[:, None]
            s = s + beta * ((top & ~region).to(s.dtype) - region.to(s.dtype))
        return s[:b], s[b:]

    def _grow(
        self,
        s: torch.Tensor,
        top: torch.Tensor,
        size: torch.Tensor,
        u: torch.Tensor,
        adj: torch.Tensor,
        steps: int,
    ) -> torch.Tensor:
        """A connected-leaning sample of ``size[r]`` tokens of ``top`` per row (bool)."""
        rows = torch.arange(len(s), device=s.device)
        selected = torch.zeros_like(top)
        near = torch.zeros_like(s)
        for j in range(steps):
            free = top & ~selected
            active = (j < size) & free.any(1)
            w = (u[:, j] * (s + self.config.topo * near)).masked_fill(~free, float("-inf"))
            pick = w.argmax(1)
            new = torch.zeros_like(top)
            new[rows, pick] = active
            selected |= new
            near = ((near + adj[pick] * active[:, None].to(near.dtype)).clamp(0.0, 1.0)) * (
                ~selected
            ).to(near.dtype)
        return selected

    def _final(self, x: torch.Tensor, score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 3: adaptive thresholds, restorations, their average inside the largest mask."""
        cfg, mae = self.config, self.mae
        b, L = score.shape
        taus = torch.tensor(cfg.restore_thresholds, dtype=torch.float64)
        scale = 0.99 ** torch.arange(201, dtype=torch.float64)  # c = 0 .. 200
        lowest = (1.0 - (1.0 - taus[-1]) * scale).to(score.device, score.dtype)  # (201,)
        frac = (score[:, None, :] >= lowest[None, :, None]).to(score.dtype).mean(-1)
        ok = frac < cfg.max_masked
        c = torch.where(
            ok.any(1),
            ok.to(torch.int64).argmax(1),
            torch.full_like(ok[:, 0], 200, dtype=torch.int64),
        )
        scale_c = scale.to(score.device, score.dtype)[c]  # (B,)
        tau = 1.0 - (1.0 - taus.to(score.device, score.dtype))[None, :] * scale_c[:, None]
        masks = score[:, None, :] >= tau[..., None]  # (B, K, L), nested
        full = masks.all(-1)
        if bool(full.any()):  # never hide every token: keep the lowest-scored one
            keep = torch.nn.functional.one_hot(score.argmin(1), L).bool()[:, None, :]
            masks = masks & ~(keep & full[..., None])
        k = masks.shape[1]
        flat = masks.reshape(b * k, L)
        xr = self._restore(x.repeat_interleave(k, 0), flat).view(b, k, *x.shape[1:])
        pm = mae.pixel_mask(flat).to(x.dtype).view(b, k, 1, *x.shape[2:])
        hits = pm.sum(1)
        avg = (pm * xr).sum(1) / hits.clamp_min(1.0)
        largest = masks[:, -1]
        out = torch.where(mae.pixel_mask(largest), avg, x)
        return out, largest
