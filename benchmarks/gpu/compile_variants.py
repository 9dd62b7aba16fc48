"""torch.compile variants of the faithful ``paper`` chain on a warm device machine.

Run in a second call on the machine that ran ``device.sh`` (it reads the CIFAR-10 model
that call left in ``/tmp/detox-gpu-work/cifar10``): for each variant, compile the UNet, warm
up with a 3-step chain at the batch size, then time the 140-evaluation chain. Writes
``$OUT/checks2.json``. The 2026-11-27 call ran this text as an inline script:

    export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks/gpu:$PWD/benchmarks
    python3 benchmarks/gpu/compile_variants.py
"""

import json
import os
import time
from pathlib import Path

import torch
from train_and_check import load_images, unet_flops

from detox.defenses.purifiers import build_purifier
from detox.diffusion import load_diffusion

torch.backends.cudnn.benchmark = True
m = load_diffusion("/tmp/detox-gpu-work/cifar10", device="cuda")
x, _ = load_images(Path(".gpudata"), "cifar10-test")
x = (x.float() / 255).cuda()
fl = unet_flops(m) / 1e9
res = []
eager = m.unet
for name, cl, bs in [
    ("compile+channels_last", True, 1024),
    ("compile", False, 2048),
    ("compile+channels_last", True, 2048),
]:
    eager.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
    torch._dynamo.reset()
    m.unet = torch.compile(eager)
    xx = x.repeat(2, 1, 1, 1)[:bs]
    t0 = time.time()
    pw = build_purifier("sampdetox", "paper", model=m, amp=True, stride=60).to("cuda")
    pw.purify(xx, batch_size=bs)
    torch.cuda.synchronize()
    tc = time.time() - t0
    p = build_purifier("sampdetox", "paper", model=m, amp=True).to("cuda")
    t = time.time()
    p.purify(xx, batch_size=bs)
    torch.cuda.synchronize()
    s = time.time() - t
    ips = len(xx) / s
    tf = ips * 140 * fl / 1e3
    r = dict(variant=name, preset="paper", batch=bs, images=len(xx), img_per_s=ips,
             unet_tflops=tf, compile_and_warmup_s=tc, gflop_per_eval=fl,
             device=torch.cuda.get_device_name(), torch=torch.__version__)  # fmt: skip
    print(r, flush=True)
    res.append(r)
    Path(os.environ["OUT"], "checks2.json").write_text(json.dumps(res, indent=1))
