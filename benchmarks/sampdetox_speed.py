"""SampDetox speed: detox's batched implementation vs the authors' loop structure.

Same UNet, same settings (default: the ``paper`` preset, t1 = 20, T2 = 120, i.e. 140
network evaluations per image), measured as purified images per second:

* ``loop``: the authors' structure (``SampDetox.py`` / ``GaussianDiffusionSampler``): one
  image at a time, stage-2 re-noising and masked updates pixel by pixel in Python loops
  over (i, j, channel). Too slow to run in full, so it runs ``--loop-n`` images with the
  full stage 1 and a reduced stage 2 (``--loop-t2`` steps); the per-step costs it measures
  are extrapolated explicitly to T2 steps:
  ``s/img = stage1 + ssim + renoise + T2 * (stage-2 s/step)``. The mean share of
  updated pixels per step does not depend on T2 (t2 maps scale with T2), so neither does
  the mean per-step cost of the pixel loop.
* ``detox b=1``: the vectorised implementation, batch size 1 (isolates the pixel loops).
* ``detox b=B``: the vectorised implementation, batch size ``--batch-size``.
* ``detox b=B stride=s``: strided reverse chains (``--strides``), fewer evaluations.

Usage::

    python benchmarks/sampdetox_speed.py --n 32 --batch-size 32 --out sampdetox_speed.json
    python benchmarks/sampdetox_speed.py --diffusion runs/ddpm-cpu   # a trained model

Without ``--diffusion`` a random-init CPU-sized UNet (channels (32, 64, 128), 1 res-block,
no attention, 2.5M parameters; cosine schedule) is used: speed does not depend on the
weights. Images are CIFAR-10 test images when available, else uniform noise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from detox.defenses.purifiers import NoiseStreams, build_purifier
from detox.defenses.purifiers.sampdetox import level_grid, level_map, snap_up, trigger_map
from detox.diffusion import load_diffusion, new_diffusion_model


def load_images(n: int, size: int) -> tuple[torch.Tensor, str]:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    if shared.is_dir():  # the project's data folder, as in tests/conftest.py
        os.environ.setdefault("DETOX_DATA_DIR", str(shared))
    try:
        from detox.data import load_dataset

        ds = load_dataset("cifar10", "test")
        if ds.x.shape[-1] == size:
            return ds.x[:n].float() / 255.0, "cifar10-test"
    except Exception as e:  # data not available: speed does not depend on content
        print(f"(no CIFAR-10: {type(e).__name__}; using random images)", file=sys.stderr)
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, size, size, generator=g), "uniform-noise"


def time_batched(purifier, x: torch.Tensor, batch_size: int) -> float:
    """Seconds to purify ``x`` with the vectorised implementation (after a warm-up)."""
    purifier.purify(x[:1], batch_size=1)  # warm-up (allocations, lazy init)
    t = time.perf_counter()
    purifier.purify(x, batch_size=batch_size)
    return time.perf_counter() - t


def time_loop(purifier, x: torch.Tensor, loop_t2: int) -> dict[str, float]:
    """The authors' structure on each image of ``x``: batch size 1, per-pixel Python loops
    in stage 2, with ``loop_t2`` stage-2 steps; returns mean seconds per image per part."""
    cfg = purifier.config
    abar = purifier.model.abar_levels
    _, c, h, w = x.shape
    parts = {"stage1": 0.0, "ssim": 0.0, "renoise": 0.0, "stage2_per_step": 0.0}
    grid = level_grid(loop_t2, 1)
    with torch.inference_mode():
        for n in range(len(x)):
            xi = x[n : n + 1]
            noise = NoiseStreams(0, [n], (c, h, w), xi.device)
            t0 = time.perf_counter()
            xbar, _ = purifier._stage1(xi * 2 - 1, noise)
            t1 = time.perf_counter()
            grey = trigger_map(xi, (xbar + 1) / 2, cfg)
            t2 = snap_up(level_map(grey, loop_t2), grid)
            eps = noise.randn()
            t2_ = time.perf_counter()
            xt = xbar.clone()
            for i in range(h):
                for j in range(w):
                    lv = int(t2[0, i, j])
                    a, s = math.sqrt(float(abar[lv])), math.sqrt(1 - float(abar[lv]))
                    for k in range(c):
                        xt[0, k, i, j] = xbar[0, k, i, j] * a + eps[0, k, i, j] * s
            t3 = time.perf_counter()
            for lvl, nxt in zip(grid[:-1], grid[1:]):
                new = purifier._step(xt, lvl, nxt, noise)
                for i in range(h):
                    for j in range(w):
                        if t2[0, i, j] >= lvl:
                            for k in range(c):
                                xt[0, k, i, j] = new[0, k, i, j]
            t4 = time.perf_counter()
            parts["stage1"] += t1 - t0
            parts["ssim"] += t2_ - t1
            parts["renoise"] += t3 - t2_
            parts["stage2_per_step"] += (t4 - t3) / max(1, len(grid) - 1)
    return {k: v / len(x) for k, v in parts.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=32, help="images for the batched runs")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--diffusion", default=None, help="diffusers-format model folder")
    ap.add_argument("--preset", default="paper", help="SampDetox preset (paper, code, ...)")
    ap.add_argument("--t1", type=int, default=None)
    ap.add_argument("--T2", type=int, default=None)
    ap.add_argument("--loop-n", type=int, default=2, help="images for the loop reference")
    ap.add_argument("--loop-t2", type=int, default=10, help="stage-2 steps run by the loop")
    ap.add_argument("--strides", type=int, nargs="*", default=[5, 10])
    ap.add_argument("--b1-n", type=int, default=4, help="images for the batch-size-1 run")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.diffusion:
        model = load_diffusion(args.diffusion, device=args.device)
        model_desc = args.diffusion
    else:
        model = new_diffusion_model(
            sample_size=32, block_out_channels=(32, 64, 128), beta_schedule="cosine"
        )
        model_desc = "random-init (32, 64, 128), 1 layer, no attention"
    size = model.sample_size or 32
    x, data = load_images(max(args.n, args.loop_n, args.b1_n), size)

    over = {k: v for k, v in (("t1", args.t1), ("T2", args.T2)) if v is not None}
    over["beta_schedule"] = "any"

    def purifier(**kw):
        return build_purifier("sampdetox", args.preset, model=model, **over, **kw).to(args.device)

    base = purifier()
    t1, T2 = base.config.t1, base.config.T2
    evals = base.describe()["network_evaluations_per_image"]
    rows = []

    # the authors' loop structure, extrapolated to T2 stage-2 steps
    lp = time_loop(base, x[: args.loop_n], args.loop_t2)
    loop_spi = lp["stage1"] + lp["ssim"] + lp["renoise"] + T2 * lp["stage2_per_step"]
    rows.append(
        {
            "method": "loop (authors' structure, b=1, per-pixel python)",
            "batch_size": 1,
            "stride": 1,
            "evals_per_image": evals,
            "images": args.loop_n,
            "img_per_s": 1.0 / loop_spi,
            "extrapolated": True,
            "parts_s_per_image": lp,
            "extrapolation": (
                f"stage1 ({t1} steps, measured) + ssim + renoise (measured) + "
                f"{T2} x stage-2 s/step (measured over {args.loop_t2} steps)"
            ),
        }
    )
    # vectorised, batch size 1
    s = time_batched(base, x[: args.b1_n], 1)
    rows.append(
        {
            "method": "detox vectorised",
            "batch_size": 1,
            "stride": 1,
            "evals_per_image": evals,
            "images": args.b1_n,
            "img_per_s": args.b1_n / s,
            "extrapolated": False,
        }
    )
    # vectorised, batched, stride 1 and the strided variants
    for stride in [1, *args.strides]:
        p = purifier(stride=stride)
        s = time_batched(p, x[: args.n], args.batch_size)
        rows.append(
            {
                "method": "detox vectorised" + (f" stride {stride}" if stride > 1 else ""),
                "batch_size": args.batch_size,
                "stride": stride,
                "evals_per_image": p.describe()["network_evaluations_per_image"],
                "images": args.n,
                "img_per_s": args.n / s,
                "extrapolated": False,
            }
        )

    loop_rate = rows[0]["img_per_s"]
    full = next(r for r in rows if r["batch_size"] == args.batch_size and r["stride"] == 1)
    for r in rows:
        r["speedup_vs_loop"] = r["img_per_s"] / loop_rate
        r["speedup_vs_batched_stride1"] = r["img_per_s"] / full["img_per_s"]

    print(
        f"\nSampDetox speed: preset {args.preset} (t1={t1}, T2={T2}), model: {model_desc}, "
        f"{model.num_parameters() / 1e6:.2f}M params, {size}x{size}, device {args.device}, "
        f"torch threads {torch.get_num_threads()}, data {data}\n"
    )
    hdr = f"{'method':<52} {'batch':>5} {'evals':>5} {'img/s':>9} {'x loop':>8} {'x b=B s=1':>9}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        star = "*" if r["extrapolated"] else ""
        print(
            f"{r['method'] + star:<52} {r['batch_size']:>5} {r['evals_per_image']:>5} "
            f"{r['img_per_s']:>9.3f} {r['speedup_vs_loop']:>8.1f} "
            f"{r['speedup_vs_batched_stride1']:>9.2f}"
        )
    print(f"\n* extrapolated: {rows[0]['extrapolation']}")
    print(
        "  loop parts (s/image): "
        + ", ".join(f"{k} {v:.3f}" for k, v in rows[0]["parts_s_per_image"].items())
    )
    print(
        f"\nbatched (b={args.batch_size}) vs loop: {full['speedup_vs_loop']:.1f}x; "
        + ", ".join(
            f"stride {r['stride']}: {r['speedup_vs_batched_stride1']:.1f}x more"
            for r in rows
            if r["stride"] > 1
        )
    )
    result = {
        "preset": args.preset,
        "t1": t1,
        "T2": T2,
        "model": model_desc,
        "parameters": model.num_parameters(),
        "image_size": size,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "data": data,
        "rows": rows,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
