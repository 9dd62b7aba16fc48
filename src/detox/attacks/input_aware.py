"""Input-aware dynamic backdoor (Nguyen & Tran, "Input-Aware Dynamic Backdoor Attack",
NeurIPS 2020, arXiv 2010.08138; authors' code github.com/VinAIResearch/
input-aware-backdoor-attack-release, ``train.py``, ``networks/models.py``, ``config.py``):
a training-controlled attack whose trigger is *generated per image*.

Two small encoder-decoder networks of the same shape (3 down-sampling steps of two
conv-BN-ReLU blocks from ``width`` channels, a middle block, 3 bilinear up-sampling steps;
output ``tanh / (2 + 1e-7) + 0.5``, so in [0, 1]):

* the **mask generator** M (one output channel) is trained first, alone, on the clean
  training images: it minimises ``lambda_norm * mean(relu(m(x) - mask_density))`` (sparse
  masks, density 0.032) ``+ lambda_div * mean(||x - x'|| / ||m(x) - m(x')||)`` (different
  images get different masks), ``m(x) = threshold(M(x)) = tanh(20 M(x) - 10) / (2 + 1e-7)
  + 0.5``, with Adam (lr 0.01, betas 0.5 / 0.9) for 25 epochs, lr x 0.1 after epochs 10 and
  20 [code]. It is then frozen (eval mode). This is the attack's **artefact**, built and
  cached by :meth:`AttackContext.artefact` like the other learned attacks.
* the **pattern generator** G (3 channels) trains *with the victim*, through the training
  hook (:class:`InputAwareHook`): in each batch the first ``ratio`` (p_attack 0.1) of the
  examples become backdoored, ``x + (G(x) - x) * m(x)`` labelled with the target, the next
  ``cross_ratio`` (p_cross 0.1) become *cross* examples, ``x + (G(x') - x) * m(x')`` with
  the pattern and mask of another image ``x'``, label kept (so a trigger only works on the
  image it was made for), and the rest stays clean. G minimises the classifier's
  cross-entropy plus ``lambda_div * mean(||x - x'|| / ||G(x) - G(x')||)`` with Adam
  (lr 0.01, betas 0.5 / 0.9) [code]. The triggered test images are
  ``x + (G(x) - x) * m(x)`` with what the hook learned.

The distances are root mean squared differences per image, as the code's
``sqrt(mean(MSE))``. Where detox differs (each setting's source says which it follows):

* the code draws ``x'`` from a second, independently shuffled loader; detox takes the
  batch's *last* ``cross_ratio`` examples (clean images of the same batch, so the pairing
  is seeded with the batch) and needs ``ratio == cross_ratio`` for the diversity pairing,
  as the code's indexing does;
* the code feeds the networks normalised images and blends in the normalised space; detox
  feeds [0, 1] images and blends there: the blend is the same image (normalisation is a
  per-channel affine map), and G's first layer is followed by batch norm;
* G's learning rate follows the victim's schedule (``generator_schedule = "victim"``:
  ``generator_lr`` x the classifier's learning-rate factor at each step, through the
  trainer's ``on_lr`` hook). The code decays G's and the classifier's rates alike, x 0.1
  at epochs 200, 300, 400 (G) and 100, 200, 300, 400 (classifier) of 1,000; detox's
  victims train 5-100 epochs on one-cycle or triangle schedules, so G follows the
  classifier's own. ``"constant"`` keeps ``generator_lr`` throughout (G then still moves
  at full speed in the last steps, while the classifier's rate has decayed to a few
  percent). The victim trains with its own recipe and augmentation, applied before the
  trigger as in the code;
* ``quick`` pre-trains the mask for ``mask_epochs`` = 6 on ``mask_images`` = 4,096 seeded
  training images in batches of 64 pairs (384 steps; the code: 25 epochs on all of them in
  batches of 128, the ``paper`` preset), and both generators start from ``width`` = 16
  channels instead of 32 (a quarter of the arithmetic; 4,096 images and 6 epochs bring the
  mask's mean to about 0.045 against the 0.032 it is pushed to). Both generators run under
  bf16 autocast in channels-last memory (``amp``), the losses in float32.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detox.attacks.base import Attack, AttackConfig, hp, register
from detox.attacks.context import AttackTrainHook
from detox.errors import ConfigError
from detox.utils.seed import derive_seed, seeded_global_rng

EPS = 1e-7


@dataclass
class InputAwareConfig(AttackConfig):
    ratio: float = hp(
        0.1,
        "fraction of each training batch",
        "[code] p_attack 0.1",
        help="backdoored examples per batch (made on the fly; no stored example changes)",
        range="(0, 0.5]",
    )
    cross_ratio: float = hp(
        0.1,
        "fraction of each training batch",
        "[code] p_cross 0.1",
        help="cross examples per batch (another image's pattern and mask, label kept)",
        range="(0, 0.5]",
    )
    mask_density: float = hp(0.032, "mask mean", "[code] mask_density 0.032", range="(0, 1)")
    lambda_div: float = hp(1.0, "weight", "[code] lambda_div 1", range="[0, inf)")
    lambda_norm: float = hp(100.0, "weight", "[code] lambda_norm 100", range="[0, inf)")
    width: int = hp(
        16,
        "channels",
        "[detox] quick 16 (a quarter of the arithmetic on the CPU); [code] channel_init 32 "
        "(CIFAR-10, GTSRB; paper preset)",
        help="channels of the generators' first blocks (doubled at each down-sampling)",
        range="[1, inf)",
    )
    steps: int = hp(3, "down-sampling steps", "[code] 3 (2 for MNIST)", range="[1, inf)")
    generator_lr: float = hp(
        0.01, "Adam learning rate", "[code] lr_G 0.01, betas (0.5, 0.9)", range="(0, inf)"
    )
    generator_schedule: str = hp(
        "victim",
        "constant | victim",
        "[detox] quick and paper: victim (the code decays G's lr x 0.1 at epochs 200, 300, "
        "400 of its classifier's 1,000, as the classifier's own; detox's victims train "
        "5-100 epochs); constant: the code's lr for the whole training",
        help="G's learning rate: generator_lr throughout, or generator_lr x the victim's "
        "learning-rate factor at each step (its warm-up and decay)",
        choices=("constant", "victim"),
    )
    mask_lr: float = hp(
        0.01, "Adam learning rate", "[code] lr_M 0.01, betas (0.5, 0.9)", range="(0, inf)"
    )
    mask_epochs: int = hp(
        6,
        "epochs",
        "[detox] quick 6; [code] 25 (paper preset)",
        help="mask-generator pre-training epochs (lr x 0.1 after 40% and 80% of them; "
        "[code] after epochs 10 and 20 of 25)",
        range="[1, inf)",
    )
    mask_images: int | None = hp(
        4096,
        "training images",
        "[detox] quick 4,096; [code] all (paper preset)",
        help="seeded subset of the training set the mask generator trains on; None: all",
        range="[2, inf)",
    )
    mask_batch_size: int = hp(
        64,
        "image pairs",
        "[detox] quick 64 (twice the steps for the same arithmetic); [code] batchsize 128 "
        "(paper preset)",
        range="[2, inf)",
    )
    amp: bool = hp(
        True,
        "",
        "[impl] bf16 autocast for the generators' convolutions (2-3x faster on the CPU); "
        "losses in float32",
        help="bf16 autocast on the device for both generators",
    )

    def validate(self) -> None:
        super().validate()
        if self.ratio != self.cross_ratio:
            raise ConfigError(
                f"input-aware: ratio={self.ratio} and cross_ratio={self.cross_ratio} must be "
                "equal (the diversity loss pairs each backdoored example with one cross "
                "example, as in the authors' code)"
            )
        if self.ratio + 2 * self.cross_ratio > 1:
            raise ConfigError(
                f"input-aware: ratio + 2 x cross_ratio = {self.ratio + 2 * self.cross_ratio:g}"
                " > 1: the cross examples' partner images are the batch's last ones and must "
                "not overlap the backdoored and cross examples"
            )


def _block(cin: int, cout: int, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout, momentum=0.05),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


class TriggerGenerator(nn.Sequential):
    """The code's encoder-decoder (``networks/models.py`` ``Generator``): ``steps`` x (two
    conv blocks, 2x2 max-pool) from ``width`` channels doubling, a middle block, ``steps``
    x (bilinear 2x up-sampling, two conv blocks halving), the last without ReLU; output
    ``tanh(.) / (2 + 1e-7) + 0.5`` in [0, 1]."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 32, steps: int = 3):
        layers: list[nn.Module] = []
        cin, c = in_channels, width
        for s in range(steps):
            layers += _block(cin, c) + _block(c, c) + [nn.MaxPool2d(2)]
            cin = c
            if s < steps - 1:
                c *= 2
        layers += _block(c, c)
        for s in range(steps):
            last = s == steps - 1
            cout = out_channels if last else c // 2
            layers += [nn.Upsample(scale_factor=2, mode="bilinear")]
            layers += _block(c, c) + _block(c, cout, relu=not last)
            c = cout
        super().__init__(*layers)
        self.steps = steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.tanh(super().forward(x)) / (2 + EPS) + 0.5

    @staticmethod
    def threshold(m: torch.Tensor) -> torch.Tensor:
        """The code's sharpening of a mask in [0, 1]: tanh(20 m - 10) / (2 + 1e-7) + 0.5."""
        return torch.tanh(m * 20 - 10) / (2 + EPS) + 0.5


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image root mean squared difference (the code's sqrt(mean(MSE))), with 1e-12
    under the root: two saturated masks can be exactly equal, and the root's gradient at
    0 is infinite (NaN weights after one step)."""
    return (a - b).pow(2).mean(dim=(1, 2, 3)).add(1e-12).sqrt()


def diversity_loss(
    x1: torch.Tensor, x2: torch.Tensor, out1: torch.Tensor, out2: torch.Tensor
) -> torch.Tensor:
    """mean(||x1 - x2|| / (||out1 - out2|| + 1e-7)): small when different images get
    different outputs (the code's ``loss_div`` before its weight)."""
    return (_rms(x1, x2) / (_rms(out1, out2) + EPS)).mean()


def _run(net: nn.Module, x: torch.Tensor, amp: bool) -> torch.Tensor:
    """``net(x)`` in channels-last memory, under bf16 autocast when ``amp``; float32 out."""
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        return net(x).float().contiguous()


@register
class InputAware(Attack):
    name = "input-aware"
    aliases = ("inputaware", "dynamic", "iad")
    Config = InputAwareConfig
    config: InputAwareConfig
    controls_training = True
    learned = True
    presets = {
        "quick": {},
        "paper": {"mask_epochs": 25, "mask_images": None, "mask_batch_size": 128, "width": 32},
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mask_net: TriggerGenerator | None = None
        self.pattern_net: TriggerGenerator | None = None

    def min_size(self, shape):
        return 2**self.config.steps

    def check_shape(self, shape: tuple[int, ...]) -> None:
        super().check_shape(shape)
        h, w = (int(s) for s in shape[-2:])
        k = 2**self.config.steps
        if h % k or w % k:
            raise ConfigError(
                f"attack 'input-aware': image sides must be multiples of {k} (its generators "
                f"down-sample {self.config.steps} times), got {h}x{w}"
            )

    def _new_net(self, channels: int, out: int, key: str) -> TriggerGenerator:
        cfg = self.config
        seed = derive_seed(self.seed, self.name, key)
        with seeded_global_rng(seed):
            net = TriggerGenerator(channels, out, cfg.width, cfg.steps)
        return net.to(memory_format=torch.channels_last)

    # -- the artefact: the mask generator -----------------------------------------------------
    def prepare(self, train: Any, ctx: Any = None) -> None:
        if ctx is None:
            raise ConfigError(
                "input-aware: prepare needs an AttackContext (its artefact cache); poison() "
                "gives one"
            )
        self.check_shape(tuple(train.x.shape))
        channels = int(train.x.shape[1])
        record: dict[str, Any] = {}

        def build() -> dict[str, torch.Tensor]:
            t0 = time.perf_counter()
            net, losses = self._train_mask(train.x, ctx)
            record.update(epoch_losses=losses, seconds=round(time.perf_counter() - t0, 2))
            return dict(net.state_dict())

        state = ctx.artefact(self, build, record=record)
        net = self._new_net(channels, 1, "mask")
        net.load_state_dict(state)
        self.mask_net = net.to(ctx.device).eval().requires_grad_(False)

    def _train_mask(self, x: torch.Tensor, ctx: Any) -> tuple[TriggerGenerator, list[dict]]:
        """Pre-train the mask generator on uint8 images ``x`` (the code's
        ``train_mask_step``): returns it and each epoch's mean norm and diversity losses."""
        from tqdm.auto import tqdm

        cfg = self.config
        gen = self.generator("mask-data")
        if cfg.mask_images is not None and cfg.mask_images < len(x):
            x = x[torch.randperm(len(x), generator=gen)[: cfg.mask_images].sort().values]
        net = self._new_net(int(x.shape[1]), 1, "mask").to(ctx.device).train()
        opt = torch.optim.Adam(net.parameters(), lr=cfg.mask_lr, betas=(0.5, 0.9))
        milestones = sorted({max(1, round(cfg.mask_epochs * f)) for f in (0.4, 0.8)})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, 0.1)
        bs = cfg.mask_batch_size
        losses: list[dict] = []
        bar = tqdm(
            range(cfg.mask_epochs), desc="input-aware mask", unit="epoch",
            disable=not ctx.progress, leave=False,
        )  # fmt: skip
        for _ in bar:
            o1 = torch.randperm(len(x), generator=gen)
            o2 = torch.randperm(len(x), generator=gen)
            sums, n = {"norm": 0.0, "div": 0.0}, 0
            for i in range(0, len(x) - bs + 1, bs):
                x1 = x[o1[i : i + bs]].to(ctx.device).float().div_(255.0)
                x2 = x[o2[i : i + bs]].to(ctx.device).float().div_(255.0)
                m = net.threshold(_run(net, torch.cat([x1, x2]), cfg.amp))
                m1, m2 = m[:bs], m[bs:]
                norm = F.relu(m1 - cfg.mask_density).mean()
                div = diversity_loss(x1, x2, m1, m2)
                loss = cfg.lambda_norm * norm + cfg.lambda_div * div
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sums["norm"] += float(norm.detach()) * bs
                sums["div"] += float(div.detach()) * bs
                n += bs
            sched.step()
            losses.append({k: round(v / max(n, 1), 6) for k, v in sums.items()})
            bar.set_postfix(norm=f"{losses[-1]['norm']:.4f}", div=f"{losses[-1]['div']:.3f}")
        return net.eval(), losses

    # -- training: the pattern generator learns with the victim -------------------------
    def training_hook(self, ctx: Any) -> InputAwareHook:
        if self.mask_net is None:
            self.prepare(ctx.train, ctx)
        return InputAwareHook(self, ctx.device)

    def blend(self, x: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        """``x + (G(s) - x) * m(s)`` with ``s`` = ``source`` (default ``x``): the trigger of
        image ``s`` applied to ``x``, differentiable in G."""
        if self.mask_net is None or self.pattern_net is None:
            raise ConfigError(
                "input-aware: no trigger generator yet; the trigger is learned while the "
                "victim trains (train_victim / detox run), so triggered images exist only "
                "after that"
            )
        s = x if source is None else source
        amp = self.config.amp
        with torch.no_grad():
            m = self.mask_net.threshold(_run(self.mask_net, s, amp))
        return x + (_run(self.pattern_net, s, amp) - x) * m

    def _trigger(self, x, *, train, generator):
        if self.pattern_net is None or self.mask_net is None:
            return self.blend(x)  # raises the explanation
        dev = next(self.pattern_net.parameters()).device
        was = self.pattern_net.training
        self.pattern_net.eval()
        try:
            with torch.no_grad():
                return self.blend(x.to(dev)).to(x.device)
        finally:
            self.pattern_net.train(was)


class InputAwareHook(AttackTrainHook):
    """Shapes each victim batch (the code's ``train_step``): backdoored and cross examples
    first, the diversity loss added to the classifier's loss, G stepped after the
    classifier. Its state (G's and M's weights) is kept with the victim in the cache."""

    def __init__(self, attack: InputAware, device: torch.device) -> None:
        super().__init__(attack)
        cfg = attack.config
        assert attack.mask_net is not None
        channels = int(attack.mask_net[0].in_channels)
        attack.pattern_net = attack._new_net(channels, channels, "pattern").to(device)
        self.opt = torch.optim.Adam(
            attack.pattern_net.parameters(), lr=cfg.generator_lr, betas=(0.5, 0.9)
        )
        self._div: torch.Tensor | None = None

    def on_lr(self, factor: float) -> None:
        """G's learning rate follows the victim's schedule (``generator_schedule``)."""
        if self.attack.config.generator_schedule == "victim":
            for group in self.opt.param_groups:
                group["lr"] = self.attack.config.generator_lr * factor

    def on_batch(self, epoch, idx, xb, yb):
        a, cfg = self.attack, self.attack.config
        n = len(xb)
        nb = int(cfg.ratio * n)
        if nb == 0:
            self._div = None
            return xb, yb
        a.pattern_net.train()
        x1, xc, x2 = xb[:nb], xb[nb : 2 * nb], xb[n - nb :]
        src = torch.cat([x1, x2])
        p1, p2 = _run(a.pattern_net, src, cfg.amp).split(nb)
        with torch.no_grad():
            m1, m2 = a.mask_net.threshold(_run(a.mask_net, src, cfg.amp)).split(nb)
        bd = x1 + (p1 - x1) * m1
        cross = xc + (p2 - xc) * m2
        self._div = cfg.lambda_div * diversity_loss(x1, x2, p1, p2)
        x_out = torch.cat([bd, cross, xb[2 * nb :]])
        y_out = torch.cat([a.target_map(yb[:nb]), yb[nb:]])
        return x_out, y_out

    def on_loss(self, epoch, logits, yb, loss):
        return loss if self._div is None else loss + self._div

    def on_step(self, epoch):
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self._div = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        a = self.attack
        out = {f"pattern.{k}": v for k, v in a.pattern_net.state_dict().items()}
        out.update({f"mask.{k}": v for k, v in a.mask_net.state_dict().items()})
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        a = self.attack
        for prefix, net in (("pattern.", a.pattern_net), ("mask.", a.mask_net)):
            net.load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )
        a.pattern_net.eval()
