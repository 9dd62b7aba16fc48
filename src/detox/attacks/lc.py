"""LC, the label-consistent attack (Turner, Tsipras and Madry, "Label-Consistent Backdoor
Attacks", arXiv 1912.02771; authors' code github.com/MadryLab/label-consistent-backdoor-code,
``poison_attack.py``; BackdoorBench's ``lc``, ``resource/label-consistent``): clean-label.
Target-class training images are first made hard to classify by an adversarial
perturbation, so that the model has to rely on the trigger to fit them, then the trigger is
stamped; their labels are kept.

The artefact (built once by :meth:`LC.prepare`, cached by content with
:meth:`AttackContext.artefact <detox.attacks.context.AttackContext.artefact>`): **every**
target-class training image, perturbed by untargeted L_inf PGD on a surrogate::

    x_adv = x                                   (random_start: x + U(-eps, eps))
    repeat `steps` times:
        x_adv = clip(x + clip(x_adv + step_size * sign(grad CE(f(x_adv), y)) - x,
                              -eps, eps), 0, 1)
    x_adv rounded to uint8 (stays within eps of x in 1/255 units)

(``y`` = the target class, the images' own label; ``f`` in eval mode). Poisoning then
replaces each chosen image by its ``x_adv`` and adds the reduced-amplitude trigger, the
code's ``all-corners`` 3x3 pattern ``P`` = [[+,-,-],[-,+,-],[+,-,+]] in the top-left corner
and its mirror images in the other three (``+`` = +1, ``-`` = -1, the same in every
channel): ``clip(x_adv + amplitude * P)`` (the code's ``trigger_add_mask``). The triggered
test images get the full-amplitude trigger, pixels set to 1 (``+``) or 0 (``-``) (the
code's ``trigger_mask``), without perturbation.

**How the trigger finds an image's perturbation.** :meth:`Attack._trigger` receives float
images and no index (:func:`~detox.attacks.poison` calls ``apply_uint8(train.x[idx])``), and
the perturbation is per image. So the artefact covers the whole target class, whatever
subset the poisoning draws, and the trigger matches each image to it by content: the
image's exact uint8 bytes (``round(255 x)``, exact for images that came from uint8) look up
the clean target-class image they equal. An image found nowhere (another class, a
transformed copy) gets the trigger alone; :attr:`LC.unmatched` counts them. Identical
images share one perturbation.

Settings and their sources (each field says which it follows):

* ``eps`` 8/255 (preset ``eps8``, the default) or 16/255 (``eps16``) [paper: its two
  L_inf bounds; BackdoorBench: 8];
* PGD ``steps`` / ``step_size``: [BackdoorBench] 100 steps of 1.5/255, no random start
  (``paper`` preset); ``quick`` runs 10 steps of 2.5 eps / steps [open] (Madry et al.'s rule);
* ``amplitude`` 64/255 [paper: the reduced-amplitude four-corner trigger at 16, 32 or
  64/255; METHODS.md section 4: 64/255 or 1; the code takes it as a parameter, its
  README's example 32/255; BackdoorBench: ``reduced_amplitude: 1``, full amplitude, the
  ``backdoorbench`` preset], ``amplitude_test`` 1 (full);
* ``ratio`` 0.1 of the target class, target 0 [METHODS.md section 4; BackdoorBench reads
  ``pratio`` 0.1 as a fraction of the whole training set, all 5,000 CIFAR-10 target images].

Where detox simplifies or differs:

* **the surrogate is normally trained** (``ctx.surrogate(surrogate_preset)``, on the clean
  training set): the paper and BackdoorBench attack an *adversarially trained* model (its
  perturbations look more like other classes; a normal model's are less semantic), which
  detox does not train;
* only the L_inf PGD variant (the paper also has L_2 PGD and GAN interpolation);
* ``x_adv`` is rounded to uint8 (BackdoorBench truncates); the pattern is the code's
  ``all-corners`` mask, whose corners are mirror images (not one checkerboard copied);
* images are matched by content, as above (no per-index seam in :meth:`Attack._trigger`).

Presets (a run's ``quick`` / ``paper`` preset picks the one of that name): ``quick`` (the
defaults: a ``smoke`` surrogate, 10 PGD steps; 117 s on full CIFAR-10 on a loaded
2-core CPU, one thread: surrogate 65 s, PGD on the 5,000 target images 51 s, which take
the surrogate's accuracy on them from 0.736 to 0.000) and ``paper`` (a PreAct-ResNet-18 surrogate, 100 steps
of 1.5/255: a GPU job); ``eps8`` / ``eps16`` set the bound on top of the defaults (with
``paper``: ``lc:preset=paper:eps=0.0627``).

Without :meth:`prepare` there are no perturbations and the training-time trigger raises
ConfigError; the test-time trigger needs none.
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

#: The code's ``all-corners`` pattern in the top-left corner (+1: up / white, -1: down /
#: black); the other corners mirror it (top-right: left-right, bottom-left: up-down).
CORNER = ((1, -1, -1), (-1, 1, -1), (1, -1, 1))


@dataclass
class LCConfig(SurrogateSettings):
    eps: float = hp(
        8 / 255,
        "L_inf, [0, 1] scale",
        "[paper] 8/255 (preset eps8) or 16/255 (eps16); [BackdoorBench] 8/255",
        help="bound of the adversarial perturbation",
        range="(0, 1]",
    )
    steps: int = hp(
        10,
        "PGD iterations",
        "[open] quick 10; [BackdoorBench] 100 (paper preset)",
        range="[1, inf)",
    )
    step_size: float | None = hp(
        None,
        "[0, 1] scale",
        "[open] None: 2.5 eps / steps (Madry et al.); [BackdoorBench] 1.5/255 (paper preset)",
        help="PGD step (times the gradient's sign)",
        range="(0, 1]",
    )
    random_start: bool = hp(
        False, "", "[BackdoorBench] no random start", help="start PGD at x + U(-eps, eps)"
    )
    amplitude: float = hp(
        64 / 255,
        "[0, 1] scale",
        "[paper] reduced amplitude 64/255 (also 16, 32/255; METHODS.md: 64/255 or 1); "
        "[BackdoorBench] 1",
        help="training-time trigger: clip(x_adv + amplitude * pattern) in the four corners",
        range="(0, 1]",
    )
    amplitude_test: float = hp(
        1.0,
        "[0, 1] scale",
        "[paper] full amplitude at test time",
        help="test-time trigger; 1: pixels set to 1 / 0 (the code's trigger_mask)",
        range="(0, 1]",
    )
    batch_size: int = hp(250, "images per PGD batch", "[open]", range="[1, inf)")


@register
class LC(Attack):
    """See the module docstring."""

    name = "lc"
    aliases = ("label-consistent",)
    Config = LCConfig
    config: LCConfig
    label_mode = "clean"
    learned = True
    presets = {
        "quick": {},
        "paper": {"steps": 100, "step_size": 1.5 / 255, "surrogate_preset": "paper"},
        "eps8": {"eps": 8 / 255},
        "eps16": {"eps": 16 / 255},
        "backdoorbench": {"amplitude": 1.0},
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.index: torch.Tensor | None = None  # training positions of the target class
        self.x_adv: torch.Tensor | None = None  # their PGD images, uint8
        self.record: dict[str, Any] | None = None
        self._table: ImageTable | None = None
        self.unmatched = 0  # images the training-time trigger found no perturbation for

    # -- the artefact ---------------------------------------------------------------------
    def prepare(self, train: Any, ctx: Any = None) -> None:
        """Perturb every target-class image of ``train`` (or load them from the cache)."""
        if ctx is None:
            raise ConfigError(
                "lc: prepare needs an AttackContext (its surrogate and artefact cache); "
                "poison() gives one"
            )
        target = int(self.target_map.target)
        self.check_shape(tuple(train.x.shape))
        index = (train.y == target).nonzero().flatten()
        if not len(index):
            raise ConfigError(f"lc: the training set has no image of class {target}")
        info: dict[str, Any] = {}

        def build() -> dict[str, torch.Tensor]:
            t0 = time.perf_counter()
            model = ctx.surrogate_for(self.config)
            t1 = time.perf_counter()
            x_adv, stats = pgd_images(
                model, train.x[index], target, self.config, self.generator("pgd"),
                ctx.device, ctx.progress,
            )  # fmt: skip
            info.update(
                target=target,
                n_images=len(index),
                **stats,
                surrogate_seconds=round(t1 - t0, 2),
                pgd_seconds=round(time.perf_counter() - t1, 2),
            )
            return {"index": index, "x_adv": x_adv}

        art = ctx.artefact(self, build, given={"target": target}, record=info)
        self.index, self.x_adv = art["index"], art["x_adv"]
        if not torch.equal(self.index, index) or self.x_adv.shape != train.x[index].shape:
            raise ConfigError("lc: the artefact does not match the training set")
        self.record = info or None  # empty when the artefact came from the cache
        self._table = ImageTable(train.x[index], self.x_adv)

    def perturbed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For float images ``x`` in [0, 1]: ``(x_adv float on x's device, found)``, each
        image's PGD version where its uint8 bytes equal a clean target-class image (else
        the image itself, ``found`` False)."""
        if self._table is None:
            raise ConfigError(
                "attack 'lc': no perturbed images yet: call prepare(train, ctx) first "
                "(detox.attacks.poison does)"
            )
        return self._table.lookup(x)

    # -- the trigger ----------------------------------------------------------------------
    def min_size(self, shape):
        return 6  # four 3x3 corners

    def _pattern(self, g, c, h, w) -> torch.Tensor:
        """Values in {-1, 0, +1}, shape (1, H, W): the four mirrored corners."""
        p = torch.tensor(CORNER, dtype=torch.float32)
        vals = torch.zeros(1, h, w)
        vals[0, :3, :3] = p
        vals[0, :3, w - 3 :] = p.flip(1)
        vals[0, h - 3 :, :3] = p.flip(0)
        vals[0, h - 3 :, w - 3 :] = p.flip(0).flip(1)
        return vals

    def pattern(self, shape: tuple[int, int, int], like: torch.Tensor) -> torch.Tensor:
        """The trigger pattern (1, H, W): +1 / -1 in the four 3x3 corners, 0 elsewhere."""
        return self.fixed("pattern", shape, like, self._pattern)

    def _trigger(self, x: torch.Tensor, *, train: bool, generator: torch.Generator) -> torch.Tensor:
        p = self.pattern(tuple(x.shape[1:]), x)
        if train:
            out, found = self.perturbed(x)
            self.unmatched += int((~found).sum())
            return out.add_(p, alpha=float(self.config.amplitude))
        out = x.clone()
        amp = float(self.config.amplitude_test)
        if amp >= 1.0:  # the code's trigger_mask: pixels overwritten with 1 / 0
            on = (p != 0).expand_as(out)
            out[on] = (p > 0).to(x.dtype).expand_as(out)[on]
            return out
        return out.add_(p, alpha=amp)


# ---------------------------------------------------------------------------------------
# the algorithm


def pgd_images(
    model: nn.Module,
    x_uint8: torch.Tensor,
    label: int,
    cfg: LCConfig,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Untargeted L_inf PGD (the module docstring) of uint8 images ``x_uint8`` all of class
    ``label`` against ``model`` (``generator``: the random start): ``(x_adv uint8 on the CPU, {clean_accuracy,
    adv_accuracy})`` (the surrogate's accuracy before and after, on the rounded images)."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    model = model.eval()
    eps = float(cfg.eps)
    step = float(cfg.step_size) if cfg.step_size is not None else 2.5 * eps / int(cfg.steps)
    out = torch.empty_like(x_uint8)
    clean_ok = adv_ok = 0
    bs = int(cfg.batch_size)
    bar = tqdm(total=len(x_uint8), desc="lc pgd", unit="img", disable=not progress, leave=False)
    with frozen(model), bar:  # gradients for the inputs only
        for i in range(0, len(x_uint8), bs):
            x = x_uint8[i : i + bs].to(device).float().div_(255.0)
            y = torch.full((len(x),), label, dtype=torch.int64, device=device)
            xa = x.clone()
            if cfg.random_start:
                noise = torch.rand(x.shape, generator=generator).to(device)
                xa = (x + (noise * 2 - 1) * eps).clamp_(0, 1)
            for _ in range(int(cfg.steps)):
                xa.requires_grad_(True)
                loss = F.cross_entropy(model(xa).float(), y)
                (g,) = torch.autograd.grad(loss, xa)
                with torch.no_grad():
                    xa = xa.detach() + step * g.sign()
                    xa = torch.min(torch.max(xa, x - eps), x + eps).clamp_(0, 1)
            q = xa.detach().mul_(255.0).round_().to(torch.uint8)
            with torch.no_grad():
                clean_ok += int((model(x).argmax(1) == label).sum())
                adv_ok += int((model(q.float().div_(255.0)).argmax(1) == label).sum())
            out[i : i + bs] = q.cpu()
            bar.update(len(x))
    n = max(1, len(x_uint8))
    return out, {
        "clean_accuracy": round(clean_ok / n, 4),
        "adv_accuracy": round(adv_ok / n, 4),
        "step_size": step,
    }
