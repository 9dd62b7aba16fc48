"""Speed variants of SampDetox's faithful ``paper`` chain (140 UNet evaluations per image).

Runs on the device after ``device.sh`` (which installed diffusers into ``/tmp/site``)::

    PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks/gpu python3 benchmarks/gpu/compile_variants.py \
        --model /tmp/detox-gpu-work/cifar10 --deadline-s 200

For each variant it builds the UNet the variant names, warms up with a 3-step chain at the
batch size (compiling, if the variant compiles), then times the 140-evaluation chain on the
packed CIFAR-10 test images; results go to ``$OUT/checks2.json`` after every variant, so a
cut-off run keeps what it measured. Variants:

* ``autocast+compile``: ``SampDetox(amp=True, compile=True)``, the shipped GPU option.
* ``bf16+compile``: the UNet's weights cast to bf16 (no autocast: activations stay bf16
  between the memory-bound GroupNorm / SiLU / attention kernels), then compiled. It also
  records how far its purified images are from the autocast variant's (same seed).
* ``... max-autotune``: inductor's ``max-autotune-no-cudagraphs`` mode (kernel autotuning).

The 2026-11-27 first call ran an earlier form of this script (three autocast variants,
``checks_compile.json``). ``--toy`` checks the code paths on the CPU (no compile, 8 images).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch import nn
from train_and_check import load_images, unet_flops

from detox.defenses.purifiers import build_purifier
from detox.diffusion import load_diffusion


class Bf16UNet(nn.Module):
    """A UNet whose weights are bf16: inputs are cast in, the output (diffusers'
    ``UNet2DOutput``) is returned as is (``DiffusionModel.eps`` casts it to float)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    @property
    def config(self):  # diffusers' settings, read by DiffusionModel
        return self.net.config

    def forward(self, x: torch.Tensor, t: torch.Tensor):
        return self.net(x.to(torch.bfloat16), t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="/tmp/detox-gpu-work/cifar10")
    ap.add_argument("--data", default=".gpudata")
    ap.add_argument("--deadline-s", type=float, default=240, help="start no variant after")
    ap.add_argument("--toy", action="store_true")
    args = ap.parse_args()
    t_start = time.time()
    dev = "cpu" if args.toy else "cuda"
    torch.backends.cudnn.benchmark = True
    m = load_diffusion(args.model, device=dev)
    x, _ = load_images(Path(args.data), "cifar10-test")
    x = x.float() / 255
    if args.toy:
        x = x[:8]
    x = x.to(dev)
    fl = unet_flops(m) / 1e9
    eager = m.unet
    bf16 = None
    ref: torch.Tensor | None = None
    out = Path(os.environ.get("OUT", "out-gpu"), "checks2.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    res: list = []
    b1, b2 = (8, 8) if args.toy else (1024, 2048)
    variants = [  # name, bf16 weights, compile mode (None: eager), batch
        ("autocast+compile", False, "default", b1),
        ("bf16+compile", True, "default", b1),
        ("bf16+compile", True, "default", b2),
        ("bf16+compile max-autotune", True, "max-autotune-no-cudagraphs", b1),
    ]
    for name, use_bf16, mode, bs in variants:
        if time.time() - t_start > args.deadline_s:
            print(f"deadline: {name} batch {bs} not run", flush=True)
            break
        torch._dynamo.reset()
        if use_bf16:
            if bf16 is None:
                bf16 = Bf16UNet(eager.to(torch.bfloat16))
            net = bf16.net
        else:
            net = eager
        if mode is not None and not args.toy:
            net = torch.compile(net, mode=mode)
        m.unet = Bf16UNet(net) if use_bf16 else net
        xx = x.repeat(1 + (bs - 1) // len(x), 1, 1, 1)[:bs]
        kw = {"amp": not use_bf16, "compile": False, "seed": 0}
        t0 = time.time()
        build_purifier("sampdetox", "paper", model=m, stride=60, **kw).to(dev).purify(
            xx, batch_size=bs
        )
        if dev == "cuda":
            torch.cuda.synchronize()
        tc = time.time() - t0
        p = build_purifier("sampdetox", "paper", model=m, **kw).to(dev)
        t = time.time()
        y = p.purify(xx, batch_size=bs)
        if dev == "cuda":
            torch.cuda.synchronize()
        s = time.time() - t
        ips = len(xx) / s
        r = {
            "variant": name,
            "preset": "paper",
            "batch": bs,
            "images": len(xx),
            "img_per_s": ips,
            "unet_tflops": ips * 140 * fl / 1e3,
            "compile_and_warmup_s": tc,
            "gflop_per_eval": fl,
            "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
            "torch": torch.__version__,
        }
        if ref is None and not use_bf16:
            ref = y[: len(x)].float().cpu()
        elif ref is not None and bs >= len(x):
            d = (y[: len(x)].float().cpu() - ref).abs()
            r["vs_autocast_mean_abs"] = float(d.mean())
            r["vs_autocast_max_abs"] = float(d.max())
        print(r, flush=True)
        res.append(r)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        os.replace(tmp, out)


if __name__ == "__main__":
    main()
