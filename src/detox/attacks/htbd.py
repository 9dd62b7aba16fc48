"""HTBD, the hidden-trigger backdoor (Saha, Subramanya and Pirsiavash, "Hidden Trigger
Backdoor Attacks", AAAI 2020, arXiv 1910.00033; authors' code
github.com/UMBCvision/Hidden-Trigger-Backdoor-Attacks, ``generate_poison.py``,
``cfg/experiment.cfg``): clean-label, and the poisoned training images carry no trigger.

The artefact (built once by :meth:`HTBD.prepare`, cached by content with
:meth:`AttackContext.artefact <detox.attacks.context.AttackContext.artefact>`): the
poisoned training images themselves. Each chosen target-class image ``t`` gets a
perturbation ``p`` (``|p|_inf <= eps``) that moves its penultimate features (the code:
AlexNet's fc7; detox: the surrogate's ``model.features``) onto those of a *source* image
with the trigger patch pasted at a random place::

    s_k = source images with the patch at random locations (one batch per target batch)
    p = 0
    repeat `steps` times (lr halved every `halve_every` steps):
        match each target t_j to the nearest patched source s_k in feature space, greedily,
        without replacement
        loss = sum_j ||f(t_j + p_j) - f(s_k(j))||^2
        p = clamp(p - lr * grad_p loss, -eps, eps);  t_j + p_j clipped to [0, 1]
        stop early once every pair's loss is below `stop_loss`

The labels stay (target class). Training on these makes the victim map "patched source
image" features to the target; at test time the patch is pasted at a random place on
source-class images (:meth:`_trigger` with ``train=False``). The source classes are the
attack's target map's (all-to-one: every other class, the code's multi-source setting;
``source_classes`` in the attack spec for the paper's single-source one).

Settings and their sources (each field says which it follows): ``eps`` 16/255, ``lr``
0.01 halved every 1,000 steps, 5,000 steps, batches of 100, early stop at a pair loss of
10, random patch locations [code]; the patch covers 30/224 of the image side [code: 30 px
on 224 px images], 4 px on 32 px images. Where detox simplifies or differs:

* **the trigger image**: the code pastes one of its own random-pattern PNGs
  (``data/triggers/trigger_14.png``); detox draws its own seeded random pattern
  (``cells`` x ``cells`` uniform random colours, bilinearly resized to the patch);
* **the feature extractor** is a surrogate detox trains on the clean training set
  (``surrogate_preset``), not an ImageNet AlexNet; the paper fine-tunes the victim *from*
  that extractor (transfer learning), while detox's victims train from scratch, where
  feature collision is known to transfer less;
* the code's greedy pairing masks only the chosen entry of the distance matrix (its
  comment says "without replacement"); detox masks the chosen row and column, which is
  what the comment says;
* ``ratio`` 0.1 of the target class [open: the code poisons a fixed 400 images of an
  ImageNet class, about 30%]; ``quick`` runs 300 steps halving every 100 (the ``paper``
  preset: the code's 5,000 and 1,000, a PreAct-ResNet-18 surrogate).

The poisoned images are matched to their perturbation by content (:class:`ImageTable`,
as LC does). Only the images the poisoning chose are perturbed: ``ctx.index`` gives them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detox.attacks.base import Attack, hp, register
from detox.attacks.context import SurrogateSettings
from detox.attacks.ops import ImageTable, frozen
from detox.errors import ConfigError


@dataclass
class HTBDConfig(SurrogateSettings):
    ratio: float = hp(
        0.1,
        "fraction of the target class",
        "[open] the code poisons 400 images of one ImageNet class (about 30%)",
        range="(0, 1]",
    )
    eps: float = hp(16 / 255, "L_inf, [0, 1] scale", "[code] eps 16", range="(0, 1]")
    patch_fraction: float = hp(
        30 / 224,
        "fraction of the image side",
        "[code] patch_size 30 on 224 px images (4 px on 32 px)",
        range="(0, 1]",
    )
    cells: int = hp(
        4,
        "cells per side",
        "[open] the trigger: seeded random colours on a cells x cells grid, resized to the "
        "patch (the code's trigger PNGs are random patterns of its own)",
        range="[1, inf)",
    )
    steps: int = hp(
        300,
        "optimisation steps per batch",
        "[detox] quick 300; [code] num_iter 5000 (paper preset)",
        range="[1, inf)",
    )
    lr: float = hp(0.01, "gradient step", "[code] lr 0.01", range="(0, inf)")
    halve_every: int = hp(
        100,
        "steps",
        "[detox] quick 100; [code] 1000 (paper preset)",
        help="the step size halves every this many steps",
        range="[1, inf)",
    )
    batch_size: int = hp(100, "images", "[code] batch_size 100", range="[1, inf)")
    stop_loss: float = hp(
        10.0,
        "squared feature distance",
        "[code] stop once every pair's loss is below 10",
        range="[0, inf)",
    )


@register
class HTBD(Attack):
    name = "htbd"
    aliases = ("htba", "hidden-trigger")
    Config = HTBDConfig
    config: HTBDConfig
    label_mode = "clean"
    learned = True
    presets = {
        "quick": {},
        "paper": {
            "steps": 5000,
            "halve_every": 1000,
            "surrogate_preset": "paper",
            "surrogate_model": "preact-resnet18",
        },
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._table: ImageTable | None = None
        self.unmatched = 0

    def patch_size(self, shape: tuple[int, ...]) -> int:
        h, w = (int(s) for s in shape[-2:])
        return max(1, round(min(h, w) * float(self.config.patch_fraction)))

    def min_size(self, shape):
        return 2

    def _pattern(self, g, c, h, w) -> torch.Tensor:
        s, k = self.patch_size((h, w)), int(self.config.cells)
        cells = torch.rand(1, c, k, k, generator=g)
        return F.interpolate(cells, size=(s, s), mode="bilinear", align_corners=False)[0]

    def pattern(self, shape: tuple[int, int, int], like: torch.Tensor) -> torch.Tensor:
        """The trigger patch (C, S, S) in [0, 1]."""
        return self.fixed("patch", shape, like, self._pattern)

    def paste(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``x`` with the patch pasted at a random place in each image (the code's
        ``rand_loc``: any position that keeps the patch inside the image)."""
        p = self.pattern(tuple(x.shape[1:]), x)
        s = p.shape[-1]
        h, w = x.shape[-2:]
        rows = torch.randint(0, h - s + 1, (len(x),), generator=generator)
        cols = torch.randint(0, w - s + 1, (len(x),), generator=generator)
        r = (rows[:, None] + torch.arange(s)).to(x.device)  # (B, S)
        c = (cols[:, None] + torch.arange(s)).to(x.device)
        out = x.clone()
        b = torch.arange(len(x), device=x.device)[:, None, None]
        out_perm = out.permute(0, 2, 3, 1)  # (B, H, W, C) view
        out_perm[b, r[:, :, None], c[:, None, :]] = p.permute(1, 2, 0)
        return out

    # -- the artefact ---------------------------------------------------------------------
    def prepare(self, train: Any, ctx: Any = None) -> None:
        if ctx is None:
            raise ConfigError(
                "htbd: prepare needs an AttackContext (its surrogate and artefact cache); "
                "poison() gives one"
            )
        from detox.cache import cache_key

        target = int(self.target_map.target)
        self.check_shape(tuple(train.x.shape))
        index = getattr(ctx, "index", None)
        if index is None:  # not called by poison(): every target-class image
            index = (train.y == target).nonzero().flatten()
        index = torch.as_tensor(index, dtype=torch.int64).flatten()
        if not len(index):
            raise ConfigError(f"htbd: no image of the target class {target} to perturb")
        if bool((train.y[index] != target).any()):
            raise ConfigError("htbd: every image to perturb must be of the target class")
        sources = self.target_map.eligible(train.y) & (train.y != target)
        source_idx = sources.nonzero().flatten()
        if not len(source_idx):
            raise ConfigError("htbd: the training set has no image of a source class")
        info: dict[str, Any] = {}

        def build() -> dict[str, torch.Tensor]:
            t0 = time.perf_counter()
            model = ctx.surrogate_for(self.config)
            t1 = time.perf_counter()
            g = self.generator("sources")
            pick = source_idx[torch.randint(0, len(source_idx), (len(index),), generator=g)]
            x_poison, stats = collide_features(
                model, train.x[index], train.x[pick], self, g, ctx.device, ctx.progress
            )
            info.update(
                target=target,
                n_images=len(index),
                **stats,
                surrogate_seconds=round(t1 - t0, 2),
                seconds=round(time.perf_counter() - t0, 2),
            )
            return {"index": index, "x_poison": x_poison}

        given = {"target": target, "index": cache_key(index), "sources": cache_key(source_idx)}
        art = ctx.artefact(self, build, given=given, record=info)
        if not torch.equal(art["index"], index):
            raise ConfigError("htbd: the artefact does not match the training set")
        self._table = ImageTable(train.x[index], art["x_poison"])

    # -- the trigger ----------------------------------------------------------------------
    def _trigger(self, x: torch.Tensor, *, train: bool, generator: torch.Generator) -> torch.Tensor:
        if not train:
            return self.paste(x, generator)
        if self._table is None:
            raise ConfigError(
                "htbd: no poisoned images yet: call prepare(train, ctx) first "
                "(detox.attacks.poison does)"
            )
        out, found = self._table.lookup(x)
        self.unmatched += int((~found).sum())
        return out


def _greedy_match(d: torch.Tensor) -> torch.Tensor:
    """For a (sources, targets) distance matrix: ``m[j]`` = the source paired with target
    ``j``, taking the closest remaining pair each time (no source or target twice)."""
    d = d.detach().clone()
    n_s, n_t = d.shape
    m = torch.full((n_t,), -1, dtype=torch.int64, device=d.device)
    big = torch.finfo(d.dtype).max
    for _ in range(min(n_s, n_t)):
        flat = int(torch.argmin(d))
        i, j = divmod(flat, n_t)
        m[j] = i
        d[i, :] = big
        d[:, j] = big
    return m


def collide_features(
    model: nn.Module,
    targets_uint8: torch.Tensor,
    sources_uint8: torch.Tensor,
    attack: HTBD,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The module docstring's optimisation, batch by batch: ``(poisoned uint8 images,
    {first_loss, last_loss, steps_run})`` (mean pair losses of the batches)."""
    from tqdm.auto import tqdm

    cfg = attack.config
    device = torch.device(device)
    model = model.eval()
    out = torch.empty_like(targets_uint8)
    first, last, steps_run = [], [], []
    bs = int(cfg.batch_size)
    bar = tqdm(
        total=len(targets_uint8), desc="htbd poisons", unit="img", disable=not progress,
        leave=False,
    )  # fmt: skip
    with frozen(model), bar:  # gradients for the inputs only
        for i in range(0, len(targets_uint8), bs):
            t = targets_uint8[i : i + bs].to(device).float().div_(255.0)
            s = sources_uint8[i : i + bs].to(device).float().div_(255.0)
            with torch.no_grad():
                f_src = model.features(attack.paste(s, generator)).float()
            pert = torch.zeros_like(t)
            for step in range(int(cfg.steps)):
                lr = float(cfg.lr) * 0.5 ** (step // int(cfg.halve_every))
                pert.requires_grad_(True)
                f_t = model.features((t + pert).clamp(0, 1)).float()
                with torch.no_grad():
                    pair = _greedy_match(torch.cdist(f_src, f_t))
                per = (f_t - f_src[pair]).pow(2).sum(1)
                (grad,) = torch.autograd.grad(per.sum(), pert)
                if step == 0:
                    first.append(float(per.detach().mean()))
                with torch.no_grad():
                    pert = (pert - lr * grad).clamp_(-cfg.eps, cfg.eps)
                    pert = (t + pert).clamp_(0, 1) - t
                if float(per.detach().max()) < float(cfg.stop_loss):
                    break
            with torch.no_grad():
                xp = (t + pert).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
                f_end = model.features(xp.float().div(255.0)).float()
                pair = _greedy_match(torch.cdist(f_src, f_end))
                last.append(float((f_end - f_src[pair]).pow(2).sum(1).mean()))
            steps_run.append(step + 1)
            out[i : i + bs] = xp.cpu()
            bar.update(len(t))
    return out, {
        "first_loss": round(sum(first) / len(first), 4),
        "last_loss": round(sum(last) / len(last), 4),
        "steps_run": steps_run,
    }
