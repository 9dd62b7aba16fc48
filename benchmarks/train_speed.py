"""Training and evaluation throughput (images/s) of every model on this machine, and
(``--compare``) test accuracy against training seconds of whole recipes.

    python benchmarks/train_speed.py --device cpu --width 0.25 --out benchmarks/out/train_speed.json
    python benchmarks/train_speed.py --compare airbench:2.5,detox-airnet:2.5,detox-resnet18:9 \
        --out benchmarks/results/train_compare.json

``--compare`` trains each ``RECIPE:EPOCHS`` on the full CIFAR-10 training set, one after
the other, and measures the test set: ``airbench`` is airbench94's recipe with its own
loop (``benchmarks/airbench_port.py``, the reference), ``detox-airnet`` the same recipe
through detox's trainer (``detox.training.AIRBENCH``), ``detox-resnet18`` the ``quick``
recipe before AirNet (``detox.training.QUICK_RESNET18``: ResNet-18 width 16, one-cycle),
``detox-quick`` the current ``quick`` preset. Accuracy without and with test-time
augmentation (airbench's level 2) for the AirNet recipes.

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


def compare(recipes: str, data_dir: str | None, seed: int) -> list[dict]:
    """Train each ``RECIPE:EPOCHS`` on CIFAR-10 and measure the test set."""
    import sys
    from pathlib import Path

    from detox.config import make_config
    from detox.training import AIRBENCH, QUICK_RESNET18, TrainConfig, predict_logits, train

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from airbench_port import train_airbench

    tr = load_dataset("cifar10", "train", data_dir=data_dir)
    te = load_dataset("cifar10", "test", data_dir=data_dir)
    rows = []
    for item in recipes.split(","):
        name, epochs = item.split(":")
        ep = float(epochs)
        if name == "airbench":
            r = train_airbench(tr.x, tr.y, ep, seed, te.x, te.y)
        else:
            recipes = {"detox-airnet": (None, AIRBENCH), "detox-resnet18": (None, QUICK_RESNET18),
                       "detox-quick": ("quick", {})}  # fmt: skip
            preset, over = recipes[name]
            cfg = make_config(TrainConfig, preset, **{**over, "epochs": ep, "seed": seed})
            cfg.progress = False
            model = build_model(cfg.model, 10, width=cfg.width, dataset="cifar10", seed=seed)
            res = train(model, tr.x, tr.y, cfg, device="cpu", desc=name)
            r = {"epochs": ep, "train_seconds": res.seconds}
            levels = (0, 2) if cfg.model == "airnet" else (0,)
            for level in levels:
                pred = predict_logits(res.model, te.x, 1000, tta=level).argmax(1)
                r[f"test_acc_tta{level}"] = float((pred == te.y).float().mean())
        r["recipe"] = name
        print(json.dumps(r), flush=True)
        rows.append(r)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--compare", default=None, help="RECIPE:EPOCHS,... (see above)")
    ap.add_argument("--seed", type=int, default=0)
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
    if args.compare:
        rows = compare(args.compare, args.data_dir, args.seed)
        print(f"threads {torch.get_num_threads()}")
        print(
            "| recipe | epochs | train seconds | test acc | test acc, TTA 2 |\n|---|---|---|---|---|"
        )
        for r in rows:
            tta = r.get("test_acc_tta2")
            print(f"| {r['recipe']} | {r['epochs']:g} | {r['train_seconds']:.0f} | "
                  f"{100 * r['test_acc_tta0']:.2f} | {'-' if tta is None else f'{100 * tta:.2f}'} |")  # fmt: skip
        if args.out:
            from detox.runs import environment
            from detox.utils.io import atomic_write_json

            atomic_write_json(
                args.out, {"args": vars(args), "environment": environment(), "rows": rows}
            )
        return
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
