"""airbench94's recipe as its author runs it, ported to run on a CPU: the reference of
``benchmarks/train_speed.py --compare``.

Written for detox from airbench94 (Jordan 2024, arXiv 2404.00498; github.com/KellerJordan/
cifar10-airbench, ``legacy/airbench94.py``), with its own training loop, *not* detox's
trainer, so that it can tell whether detox's trainer holds the recipe: data normalised and
kept on the device, every image flipped at random once and all of them mirrored on odd
epochs, 2-pixel reflect translations drawn each epoch, batch 1024 with the last partial
batch dropped, SGD-Nesterov (momentum 0.85) on the *summed* label-smoothed (0.2) loss with
airbench's decoupled learning rate (11.5 per 1024 examples) and weight decay (0.0153), a
64x learning rate for the BatchNorm biases, the triangular schedule (0.2 -> 1 at 23% ->
0.07), Lookahead every 5 steps (decay 0.95^5 x (step / total)^3, the average becomes the
model at the end), the whitening layer's bias trained for 3 epochs, test-time
augmentation level 2 for the final accuracy. Changes for the CPU: bf16 autocast instead of
fp16 weights, and the network is detox's :class:`~detox.models.airnet.AirNet` (the same
layers; ``init_from_data`` is airbench's whitening initialisation).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from detox.models.airnet import AirNet
from detox.training import _tta_logits
from detox.utils.device import autocast

MEAN = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
STD = torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1)


def _crop(padded: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    r = (padded.shape[-1] - size) // 2
    shifts = torch.randint(-r, r + 1, (len(padded), 2), generator=g)
    out = torch.empty((len(padded), padded.shape[1], size, size), dtype=padded.dtype)
    for sy in range(-r, r + 1):
        for sx in range(-r, r + 1):
            m = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
            out[m] = padded[m, :, r + sy : r + sy + size, r + sx : r + sx + size]
    return out


def train_airbench(
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: float,
    seed: int = 0,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
) -> dict:
    """Train on uint8 CIFAR-10 images; returns accuracy (TTA 0 and 2) and seconds."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    bs, momentum = 1024, 0.85
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    lr = 11.5 / kilostep
    wd = 0.0153 * bs / kilostep
    lr_bias = lr * 64.0
    t0 = time.perf_counter()
    images = (x.float() / 255 - MEAN) / STD
    net = AirNet(10)
    net.init_from_data(images[:5000])
    net = net.to(memory_format=torch.channels_last)
    norm_biases = [p for n, p in net.named_parameters() if "norm" in n and p.requires_grad]
    others = [p for n, p in net.named_parameters() if "norm" not in n and p.requires_grad]
    opt = torch.optim.SGD(
        [
            dict(params=norm_biases, lr=lr_bias, weight_decay=wd / lr_bias),
            dict(params=others, lr=lr, weight_decay=wd / lr),
        ],
        momentum=momentum,
        nesterov=True,
    )
    steps_per_epoch = len(images) // bs
    total = math.ceil(steps_per_epoch * epochs)

    def factor(step: int) -> float:
        warm = int(total * 0.23)
        if step < warm:
            f = step / warm
            return 0.2 * (1 - f) + f
        f = (step - warm) / (total - warm)
        return (1 - f) + 0.07 * f

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    alpha = 0.95**5 * (torch.arange(total + 1) / total) ** 3
    ema = {k: v.clone() for k, v in net.state_dict().items()}

    def lookahead(decay: float) -> None:
        with torch.no_grad():
            for k, v in net.state_dict().items():
                if v.is_floating_point():
                    ema[k].lerp_(v, 1 - decay)
                    v.copy_(ema[k])

    flip0 = torch.rand(len(images), generator=g) < 0.5
    flipped = torch.where(flip0[:, None, None, None], images.flip(-1), images)
    padded = F.pad(flipped, (2,) * 4, mode="reflect")
    step = 0
    for epoch in range(math.ceil(epochs)):
        net.whiten.bias.requires_grad_(epoch < 3)
        net.train()
        ep = _crop(padded, images.shape[-1], g)
        if epoch % 2 == 1:
            ep = ep.flip(-1)
        perm = torch.randperm(len(ep), generator=g)
        for i in range(steps_per_epoch):
            idx = perm[i * bs : (i + 1) * bs]
            xb = ep[idx].contiguous(memory_format=torch.channels_last)
            with autocast(torch.device("cpu"), True):
                out = net(xb)
            loss = F.cross_entropy(out.float(), y[idx], label_smoothing=0.2, reduction="sum")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 5 == 0:
                lookahead(alpha[step].item())
            if step >= total:
                lookahead(1.0)
                break
    seconds = time.perf_counter() - t0
    res = {"epochs": epochs, "steps": step, "train_seconds": seconds}
    if x_test is not None:
        net.eval()
        xt = (x_test.float() / 255 - MEAN) / STD
        with torch.no_grad(), autocast(torch.device("cpu"), True):
            for level in (0, 2):
                logits = torch.cat(
                    [
                        _tta_logits(net, xt[i : i + 1000], level).float()
                        for i in range(0, len(xt), 1000)
                    ]
                )
                res[f"test_acc_tta{level}"] = float((logits.argmax(1) == y_test).float().mean())
    return res
