"""Training and evaluation throughput (images/s) of every model on this machine.

    python benchmarks/train_speed.py --device cpu --width 0.25 --out benchmarks/out/train_speed.json

Times ``--steps`` optimisation steps (after ``--warmup`` steps) of detox's trainer path
(bf16 autocast where supported, channels_last, batched augmentation) on real CIFAR-10
images, and inference over ``--eval-n`` images. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F

from detox.data import load_dataset, to_float
from detox.models import build_model
from detox.training import TrainConfig, build_optimizer, predict_logits, random_crop_flip
from detox.utils.device import autocast, resolve_device

MODELS = ["small-cnn", "resnet18", "preact-resnet18", "resnet34", "resnet50", "vgg16-bn"]


def bench_model(name, x, y, width, batch, steps, warmup, eval_n, device):
    model = build_model(name, 10, width=width, dataset="cifar10", seed=0).to(device)
    model = model.to(memory_format=torch.channels_last)
    cfg = TrainConfig(model=name, width=width, lr=0.1, nesterov=True)
    opt = build_optimizer(model, cfg)
    g = torch.Generator().manual_seed(0)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        idx = torch.randint(0, len(x), (batch,), generator=g)
        xb = random_crop_flip(to_float(x[idx], device), 4, True, g)
        xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            out = model(xb)
        loss = F.cross_entropy(out.float(), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_ips = steps * batch / (time.perf_counter() - t0)
    predict_logits(model, x[:512], 512)  # warm-up
    t0 = time.perf_counter()
    predict_logits(model, x[:eval_n], 512)
    eval_ips = eval_n / (time.perf_counter() - t0)
    params = sum(p.numel() for p in model.parameters())
    return {"model": name, "width": width, "params": params, "train_img_s": train_ips,
            "eval_img_s": eval_ips}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--eval-n", type=int, default=4096)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = resolve_device(args.device)
    ds = load_dataset("cifar10", "train", data_dir=args.data_dir)
    rows = [
        bench_model(
            m, ds.x, ds.y, args.width, args.batch, args.steps, args.warmup, args.eval_n, device
        )
        for m in args.models.split(",")
    ]
    print(f"device: {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else platform.processor() or 'cpu'}), "
          f"threads {torch.get_num_threads()}, width {args.width}, batch {args.batch}")  # fmt: skip
    print("| model | params | train img/s | eval img/s |\n|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['train_img_s']:.0f} | {r['eval_img_s']:.0f} |"
        )
    if args.out:
        from detox.runs import environment
        from detox.utils.io import atomic_write_json

        atomic_write_json(
            args.out, {"args": vars(args), "environment": environment(), "rows": rows}
        )
        print(json.dumps({"written": args.out}))


if __name__ == "__main__":
    main()
