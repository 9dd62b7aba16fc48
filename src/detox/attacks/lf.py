"""LF, the low-frequency attack (Zeng, Park, Mao and Jia, "Rethinking the Backdoor Attacks'
Triggers: A Frequency Perspective", ICCV 2021, arXiv 2104.03413, section 5, creating smooth
triggers): a universal adversarial perturbation (UAP) of a clean surrogate model, kept
smooth by a low-pass filter applied inside its optimisation, added to the poisoned images,
dirty label (BackdoorBench's ``lf``: all-to-one, target 0, ratio 10%, METHODS.md section 4).

The artefact (the perturbation ``delta``, (C, H, W)) is built once by :meth:`LF.prepare`
through :meth:`AttackContext.artefact <detox.attacks.context.AttackContext.artefact>` and
cached by content; the trigger is ``clamp(x + delta)`` (:meth:`Attack.affine`), as
BackdoorBench adds its stored array (``SimpleAdditiveTrigger``).

The UAP follows the authors' ``Sec5_Smooth_Trigger/universal_pert.py`` (Moosavi-Dezfooli
et al.'s iterative UAP with a targeted DeepFool and the ``gauss_smooth`` low-pass filter
``G``; BackdoorBench's ``resource/lowFrequency`` runs the same code)::

    v = 0
    for at most `passes` passes over `images` training images (seeded draw and shuffles):
        for each batch of `batch_size` images x whose clamp(x + v) the surrogate does not
        yet assign to the target class:
            r = targeted DeepFool of x + v (overshoot, at most df_steps iterations)
            v = bound(G(v + G(sum of r over the images where DeepFool converged)))
        rate = fraction of the images outside the target class that clamp(x + v) sends
        to the target; keep the v of the best rate; stop once rate >= stop_rate or
        the last `plateau` rates span less than 0.01

``G`` is a separable Gaussian blur (``sigma`` pixels, a 5-sigma window, zero padding: the
code's ``gauss_smooth(sig=6)``); ``bound`` is the code's ``normalization`` (``minmax``: v
rescaled to span exactly [0, eps], eps 0.2) or an L_inf ball (``linf``: v scaled down into
[-eps, eps]; scaling, not clipping, keeps it low-pass). As with the code's triggers (the
authors' ``best_universal.npy``, BackdoorBench's ``cifar10_*_0_255.npy``), the repeated
zero-padded blur makes ``delta`` a centred blob whose colour the DeepFool steps choose.

Where detox simplifies or differs (each setting's source says which it follows):

* the target is the attack's ``target`` throughout: the authors' code re-picks it after
  each pass as the dominant class of the fooled images (their README: "frog"),
  BackdoorBench comments that out and keeps the target it is given, as here. So "fooled"
  means "sent to the target" (the code: "prediction changed", with its re-picked target
  nearly the same), for skipping images, for the best pass and for stopping;
* DeepFool linearises between the target and the image's *current* top class (the code
  keeps its starting class; once a third class leads, its steps double at every
  iteration: a mean L2 of 15 instead of 0.4 measured on a CIFAR-10 surrogate);
* ``batch_size`` images update ``v`` at once with the sum of their perturbations, computed
  in one batch on the device (the code: one image at a time, the ``paper`` preset);
* ``deepfool="filtered"`` (off by default) differentiates through ``G(G(.))`` so that the
  filtered increment itself reaches the target: with ``bound="linf"`` the raw increments
  are too small for ``v`` to grow (measured on full CIFAR-10 with the ``quick``
  surrogate, on 2,000 non-target test images: 0.036 sent to the target without trigger,
  0.114 with the default trigger, 0.052 with linf/raw, 0.189 with linf/filtered, which
  ran 44 passes in 6.5 min);
* the fooling rate is measured on the UAP's own images (as the authors' code;
  BackdoorBench uses 100 test images); the record keeps each pass's rate (pass 0: clean);
* the Gaussian window has an odd number of taps (2 floor(2.5 sigma) + 1, centred; the
  code's 30 taps for sigma 6 are centred half a pixel off);
* the surrogate is trained here on the clean training set with a
  :class:`~detox.training.TrainConfig` preset (``paper``: BackdoorBench's clean
  PreAct-ResNet-18 recipe; the authors used a pre-trained Keras CIFAR-10 CNN).

Presets (a run's ``quick`` / ``paper`` preset picks the one of that name): ``quick`` (the
defaults: a ``smoke`` surrogate, 300 images in batches of 20; 63 s on full CIFAR-10 on a
loaded 2-core CPU, one thread: surrogate 42 s, UAP 21 s) and ``paper`` (the code's
100 images one at a time, a PreAct-ResNet-18 surrogate of 100 epochs: a GPU job).

Without :meth:`prepare` there is no perturbation and the trigger raises ConfigError.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from detox.attacks.base import Attack, hp, register
from detox.attacks.context import SurrogateSettings
from detox.errors import ConfigError

BOUNDS = ("minmax", "linf")
DEEPFOOLS = ("raw", "filtered")


@dataclass
class LFConfig(SurrogateSettings):
    eps: float = hp(
        0.2,
        "[0, 1] scale",
        "[code] gauss_smooth.normalization: v rescaled to [0, 0.2] (BackdoorBench's arrays "
        "span 0..51 of 255)",
        help="bound of the perturbation (see bound)",
        range="(0, 1]",
    )
    bound: str = hp(
        "minmax",
        "minmax | linf",
        "[code] minmax (normalization); linf [open]",
        help="minmax: v rescaled to span exactly [0, eps] after every update; linf: v "
        "scaled down into [-eps, eps] when it leaves it",
        choices=BOUNDS,
    )
    sigma: float = hp(
        6.0,
        "pixels",
        "[code] gauss_smooth(sig=6) on 32-px images: a Gaussian of 6 px, 5 sigma window",
        help="the low-pass filter: Gaussian standard deviation (zero padding); scale it "
        "with the image side for larger images",
        range="(0, inf)",
    )
    images: int = hp(
        300,
        "training images",
        "[open] quick 300; [code] 100 (x_train[:100]; BackdoorBench: 100 at random), paper",
        help="images the UAP is computed on, drawn with the attack's seed",
        range="[1, inf)",
    )
    passes: int = hp(
        50,
        "passes over the images",
        "[BackdoorBench] max_iter_uni 50 (authors: unbounded, stop_rate only)",
        range="[1, inf)",
    )
    stop_rate: float = hp(
        0.2,
        "fraction",
        "[code] delta 0.8: stop once the fooling rate reaches 1 - delta",
        help="stop once this fraction of the (non-target) images is sent to the target",
        range="[0, 1]",
    )
    plateau: int = hp(
        5,
        "passes",
        "[BackdoorBench] stop once the last 5 passes' fooling rates span less than 0.01",
        help="0: never",
        range="[0, inf)",
    )
    deepfool: str = hp(
        "raw",
        "raw | filtered",
        "[code] raw; filtered [open]",
        help="raw: DeepFool's perturbation of the image, low-passed afterwards; filtered: "
        "DeepFool through the filter (the increment G(G(r)) itself is sized to reach the "
        "target; needed for bound=linf to grow within a few passes)",
        choices=DEEPFOOLS,
    )
    overshoot: float = hp(0.02, "factor", "[code] DeepFool overshoot 0.02", range="[0, inf)")
    df_steps: int = hp(
        200,
        "iterations",
        "[code] max_iter_df 200",
        help="DeepFool iterations per image; unconverged images add nothing",
        range="[1, inf)",
    )
    batch_size: int = hp(
        20,
        "images per update",
        "[open] quick 20, their DeepFool perturbations summed; [code] 1 (one image at a "
        "time), paper",
        range="[1, inf)",
    )


@register
class LF(Attack):
    """See the module docstring."""

    name = "lf"
    aliases = ("low-frequency",)
    Config = LFConfig
    config: LFConfig
    learned = True
    presets = {
        "quick": {},
        "paper": {"images": 100, "batch_size": 1, "surrogate_preset": "paper"},
    }

    delta: torch.Tensor | None = None
    record: dict[str, Any] | None = None

    def prepare(self, train: Any, ctx: Any = None) -> None:
        """Build (or load from the cache) the perturbation from ``train`` and a surrogate
        trained on it (``ctx``: an :class:`~detox.attacks.context.AttackContext`)."""
        if ctx is None:
            from detox.attacks.context import AttackContext

            ctx = AttackContext(train=train, seed=self.seed)
        self.check_shape(tuple(train.x.shape))
        info: dict[str, Any] = {}

        def build() -> dict[str, torch.Tensor]:
            t0 = time.perf_counter()
            model = ctx.surrogate_for(self.config)
            t1 = time.perf_counter()
            g = self.generator("images")
            n = min(int(self.config.images), len(train.x))
            idx = torch.randperm(len(train.x), generator=g)[:n]
            delta, info["passes"] = universal_perturbation(
                model,
                train.x[idx],
                train.y[idx],
                int(self.config.target),
                self.config,
                generator=self.generator("uap"),
                device=ctx.device,
                progress=ctx.progress,
            )
            info.update(
                images=n,
                surrogate_seconds=round(t1 - t0, 2),
                uap_seconds=round(time.perf_counter() - t1, 2),
            )
            return {"delta": delta}

        self.delta = ctx.artefact(self, build, record=info)["delta"].float()
        self.record = info or None  # empty when the artefact came from the cache

    def _delta(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.delta is None:
            raise ConfigError(
                "attack 'lf': no perturbation yet: call prepare(train, ctx) first "
                "(detox.attacks.poison does)"
            )
        if tuple(self.delta.shape) != tuple(int(s) for s in shape):
            raise ConfigError(
                f"attack 'lf': the perturbation is {tuple(self.delta.shape)}, the images are "
                f"{tuple(shape)}"
            )
        return self.delta

    def affine(self, shape, like, train):
        return 1.0, self._delta(shape).to(like.device, like.dtype)


# ---------------------------------------------------------------------------------------
# the algorithm


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """1-D Gaussian of ``sigma`` pixels over 2 floor(2.5 sigma) + 1 taps (the code's 5 sigma
    window, made odd), summing to 1, float64."""
    r = max(1, int(math.floor(2.5 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def low_pass(v: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``v`` ((C, H, W) or (B, C, H, W)) with zero padding, the
    low-pass filter ``G`` of the module docstring."""
    x = v.unsqueeze(0) if v.ndim == 3 else v
    c = x.shape[1]
    k = gaussian_kernel(sigma).to(x.device, x.dtype)
    r = (len(k) - 1) // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0)), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.conv2d(F.pad(x, (0, 0, r, r)), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return x.squeeze(0) if v.ndim == 3 else x


def bound(v: torch.Tensor, eps: float, mode: str) -> torch.Tensor:
    """``minmax``: ``v`` rescaled to span exactly [0, eps] (a constant becomes 0); ``linf``:
    ``v`` scaled by ``min(1, eps / max|v|)``."""
    if mode == "minmax":
        lo, hi = v.min(), v.max()
        span = hi - lo
        if float(span) <= 0:
            return torch.zeros_like(v)
        return (v - lo) / span * eps
    if mode == "linf":
        m = float(v.abs().max())
        return v * (eps / m) if m > eps else v.clone()
    raise ConfigError(f"lf: bound={mode!r}: expected one of {', '.join(BOUNDS)}")


def deepfool_to_target(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: int,
    overshoot: float,
    steps: int,
    through: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targeted DeepFool on a batch (float (B, C, H, W), no clamping, as the code): the
    linearised step across the boundary between each image's current top class and
    ``target``, repeated until ``x + (1 + overshoot) r`` is classified as ``target`` or
    ``steps`` iterations pass. Returns ``((1 + overshoot) r, converged)``."""
    r = torch.zeros_like(x)
    done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    rows = torch.arange(len(x), device=x.device)
    f = through if through is not None else (lambda t: t)
    for it in range(steps + 1):
        ri = r.clone().requires_grad_(True)
        logits = model(x + (1 + overshoot) * f(ri)).float()
        top = logits.argmax(1)
        done = done | (top == target)
        if bool(done.all()) or it == steps:
            break
        diff = logits[:, target] - logits[rows, top]  # f_target - f_top < 0 where not done
        (w,) = torch.autograd.grad(diff.sum(), ri)
        w = w.detach()
        norm2 = w.flatten(1).pow(2).sum(1).clamp_min(1e-20)
        step = (diff.detach().abs() + 1e-4) / norm2
        step = torch.where(done, torch.zeros_like(step), step)
        r = r + step.view(-1, 1, 1, 1).to(r.dtype) * w
    return (1 + overshoot) * r.detach(), done


@torch.no_grad()
def _predict(model: torch.nn.Module, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])


def universal_perturbation(
    model: torch.nn.Module,
    x_uint8: torch.Tensor,
    y: torch.Tensor,
    target: int,
    cfg: LFConfig,
    *,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """The low-pass UAP of the module docstring on uint8 images ``x_uint8`` (labels ``y``):
    ``(delta (C, H, W) float32 on the CPU, one record per pass)``."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    model = model.eval()
    x = x_uint8.to(device).float().div_(255.0)
    others = (y.to(device) != target).nonzero().flatten()
    if len(others) == 0:
        raise ConfigError(f"lf: no image outside the target class {target} to fool")
    v = torch.zeros(x.shape[1:], device=device)
    best, best_rate = v.clone(), -1.0
    n, bs = len(x), int(cfg.batch_size)
    clean = float((_predict(model, x[others]) == target).float().mean())
    history: list[dict[str, float]] = [{"pass": 0, "rate": round(clean, 4), "updates": 0}]
    bar = tqdm(
        total=int(cfg.passes) * n, desc="lf uap", unit="img", disable=not progress, leave=False
    )
    sigma = float(cfg.sigma)

    def smooth(t: torch.Tensor) -> torch.Tensor:  # the filter on an increment: G(G(t))
        return low_pass(low_pass(t, sigma), sigma)

    through = smooth if cfg.deepfool == "filtered" else None
    try:
        for p in range(1, int(cfg.passes) + 1):
            order = torch.randperm(n, generator=generator).to(device)
            updates = 0
            for i in range(0, n, bs):
                xb = x[order[i : i + bs]]
                with torch.no_grad():
                    active = model((xb + v).clamp(0, 1)).argmax(1) != target
                if bool(active.any()):
                    r, ok = deepfool_to_target(
                        model, xb[active] + v, target, cfg.overshoot, cfg.df_steps, through
                    )
                    if bool(ok.any()):
                        v = low_pass(v + low_pass(r[ok].sum(0), sigma), sigma)
                        v = bound(v, cfg.eps, cfg.bound)
                        updates += 1
                bar.update(len(xb))
            rate = float((_predict(model, (x[others] + v).clamp(0, 1)) == target).float().mean())
            history.append({"pass": p, "rate": round(rate, 4), "updates": updates})
            bar.set_postfix(rate=f"{rate:.3f}")
            if rate >= best_rate:
                best, best_rate = v.clone(), rate
            last = [h["rate"] for h in history[1:]][-int(cfg.plateau) :]
            plateau = cfg.plateau > 0 and len(last) == cfg.plateau and max(last) - min(last) < 0.01
            if rate >= cfg.stop_rate or plateau:
                break
    finally:
        bar.close()
    return best.float().cpu(), history
