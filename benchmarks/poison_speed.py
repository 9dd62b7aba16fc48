"""Poisoning speed: detox's batched triggers vs a straightforward per-image loop.

For every attack, times ``attack.apply_uint8`` (uint8 -> float -> trigger -> uint8, in
chunks, as :func:`detox.attacks.poison` runs it) on N CIFAR-10 training images, and a
per-image PIL/NumPy loop implementing the same trigger the way most toolkits do (PIL
``paste``/``blend``, NumPy arithmetic per image, per-block DCTs, per-image ``grid_sample``),
on a smaller sample. Both produce uint8 (N, C, H, W); the table also gives the largest
pixel difference between the two (0-255 scale; 1 = a rounding difference) and the share of
differing pixel values. (Dithering diffuses errors: float32 vs float64 inputs flip a few
pixels and the flips propagate, so it differs more than by rounding.)

    python benchmarks/poison_speed.py --n 50000 --n-loop 2000 --out poison_speed.json

Prints a markdown table (attack, batched img/s, loop img/s, ratio, seconds for 50k) and
writes the numbers, with the machine's details, as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from detox.attacks import make_attack
from detox.attacks.ops import RGB2YCRCB

# -- per-image references ------------------------------------------------------------------
# Each takes one uint8 HWC image and returns one uint8 HWC image.


def _loop_badnets(a):
    board = a.patch().numpy()
    patch = Image.fromarray((np.repeat(board[:, :, None], 3, axis=2) * 255).astype(np.uint8))

    def f(img):
        im = Image.fromarray(img)
        im.paste(patch, (img.shape[1] - 3, img.shape[0] - 3))
        return np.asarray(im)

    return f


def _loop_pil_blend(a, alpha):
    a.apply(torch.zeros(1, 3, 32, 32))  # builds and caches the pattern
    pat = _cached(a)
    pil = Image.fromarray((pat * 255).round().astype(np.uint8))

    def f(img):
        return np.asarray(Image.blend(Image.fromarray(img), pil, alpha))

    return f


def _cached(a):
    for key, t in a._cache.items():
        if len(key) == 4:
            return t.expand(3, 32, 32).permute(1, 2, 0).numpy()
    raise RuntimeError("no cached pattern")


def _loop_np_blend(a, alpha):
    a.apply(torch.zeros(1, 3, 32, 32))
    pat = _cached(a).astype(np.float32)

    def f(img):
        x = img.astype(np.float32) / 255.0
        out = np.clip((1 - alpha) * x + alpha * pat, 0, 1)
        return (out * 255).round().astype(np.uint8)

    return f


def _loop_sig(a):
    w = 32
    wave = np.sin(2 * np.pi * np.arange(w) * a.config.freq / w) * a.config.delta

    def f(img):
        out = img.astype(np.float32) + wave[None, :, None]
        return np.clip(out, 0, 255).round().astype(np.uint8)

    return f


def _loop_pixels(coords):
    def f(img):
        out = img.copy()
        for r, c in coords:
            out[r, c, :] = 255
        return out

    return f


def _loop_wanet(a):
    grid = a.fixed("grid", (3, 32, 32), torch.zeros(1), a._grid)

    def f(img):
        x = torch.from_numpy(img).permute(2, 0, 1).float().div(255).unsqueeze(0)
        y = torch.nn.functional.grid_sample(x, grid, align_corners=True).clamp(0, 1)
        return (y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    return f


def _loop_bpp(a):
    q = a.config.squeeze_num - 1

    def f(img):
        return (np.round(img.astype(np.float32) / 255 * q) / q * 255).round().astype(np.uint8)

    return f


def _loop_refool(a, n, seed):
    """Same draws as the batched run (one chunk): reflection index, then weight."""
    g = torch.Generator().manual_seed(seed)
    pool = a.pool.permute(0, 2, 3, 1).numpy()
    idx = torch.randint(len(pool), (n,), generator=g).numpy()
    cfg = a.config
    alphas = (cfg.alpha_min + (cfg.alpha_max - cfg.alpha_min) * torch.rand(n, generator=g)).numpy()
    refl = [Image.fromarray(p) for p in pool]
    state = {"i": 0}

    def f(img):
        i = state["i"]
        state["i"] += 1
        return np.asarray(Image.blend(Image.fromarray(img), refl[idx[i]], float(alphas[i])))

    return f


def _loop_frequency(a):
    """As the BaDLoss code: YCrCb, per-channel per-block DCT (scipy), add, inverse, RGB."""
    from scipy.fft import dctn, idctn

    m = RGB2YCRCB.numpy()
    inv = np.linalg.inv(m)
    off = np.array([0, 128, 128.0])
    mag, n = a.config.magnitude, a.config.block
    pos = list(zip(a.config.positions[0::2], a.config.positions[1::2]))

    def f(img):
        ycc = img.astype(np.float64) @ m.T + off
        for ch in (1, 2):
            for r0 in range(0, ycc.shape[0], n):
                for c0 in range(0, ycc.shape[1], n):
                    blk = dctn(ycc[r0 : r0 + n, c0 : c0 + n, ch], norm="ortho")
                    for r, c in pos:
                        blk[r, c] += mag
                    ycc[r0 : r0 + n, c0 : c0 + n, ch] = idctn(blk, norm="ortho")
        rgb = (ycc - off) @ inv.T
        return np.clip(rgb, 0, 255).round().astype(np.uint8)

    return f


def _loop_dither(a):
    q = a.config.squeeze_num - 1

    def f(img):
        im = img.astype(np.float64).transpose(2, 0, 1).copy()
        _, h, w = im.shape
        for y in range(h):
            for x in range(w):
                old = im[:, y, x].copy()
                new = np.round(old / 255 * q) / q * 255
                err = old - new
                im[:, y, x] = new
                if x + 1 < w:
                    im[:, y, x + 1] += err * 7 / 16
                if y + 1 < h:
                    im[:, y + 1, x] += err * 5 / 16
                    if x > 0:
                        im[:, y + 1, x - 1] += err * 3 / 16
                    if x + 1 < w:
                        im[:, y + 1, x + 1] += err * 1 / 16
        return np.clip(im, 0, 255).round().astype(np.uint8).transpose(1, 2, 0)

    return f


# (row name, attack name, params, loop builder, n_loop cap)
def cases(train, n_loop: int) -> list[tuple[str, object, Callable, int]]:
    rows = []

    def add(label, name, params, build, cap=None):
        a = make_attack(name, seed=0, **params)
        if name == "refool":
            a.prepare(train)
        rows.append((label, a, build, cap))

    add("badnets", "badnets", {}, _loop_badnets)
    add("blended", "blended", {}, lambda a: _loop_pil_blend(a, a.config.alpha))
    add("sig", "sig", {}, _loop_sig)
    add("wanet", "wanet", {}, _loop_wanet)
    add("bpp", "bpp", {}, _loop_bpp)
    add("bpp (dithering)", "bpp", {"dithering": True}, _loop_dither, 50)
    add("refool", "refool", {}, None)
    add("frequency", "frequency", {}, _loop_frequency)
    add("patch", "patch", {}, lambda a: _loop_pixels([(30, 30), (28, 30), (30, 28), (29, 29)]))
    add("single-pixel", "single-pixel", {}, lambda a: _loop_pixels([(30, 30)]))
    add("blend-random", "blend-random", {}, lambda a: _loop_np_blend(a, a.config.alpha))
    add("blend-pattern", "blend-pattern", {}, lambda a: _loop_np_blend(a, a.config.alpha))
    add("sinusoid", "sinusoid", {}, lambda a: _loop_np_blend(a, a.config.alpha))
    return rows


def run_loop(f, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    imgs = x.permute(0, 2, 3, 1).numpy()
    t = time.perf_counter()
    out = np.stack([f(img) for img in imgs])
    dt = time.perf_counter() - t
    return torch.from_numpy(out).permute(0, 3, 1, 2), dt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50000, help="images for the batched timing")
    p.add_argument("--n-loop", type=int, default=2000, help="images for the per-image loop")
    p.add_argument("--data-dir", default=None, help="folder holding the CIFAR-10 archive")
    p.add_argument("--synthetic", action="store_true", help="random images instead of CIFAR-10")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for the loops (the batched path uses detox's CPU_THREADS)",
    )
    p.add_argument("--repeat", type=int, default=2, help="batched runs; the fastest is kept")
    p.add_argument("--only", default=None, help="comma-separated row names to run")
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.synthetic:
        from detox.data import ImageDataset

        g = torch.Generator().manual_seed(0)
        n = max(args.n, args.n_loop)
        x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
        train = ImageDataset(x, torch.arange(n) % 10, [str(i) for i in range(10)], "synthetic")
    else:
        from detox.data import load_dataset

        train = load_dataset("cifar10", "train", data_dir=args.data_dir)
    x = train.x[: args.n]
    only = set(args.only.split(",")) if args.only else None
    results = []
    for label, attack, build, cap in cases(train, args.n_loop):
        if only and label not in only:
            continue
        n_loop = min(args.n_loop, cap or args.n_loop, len(x))
        n_b = len(x) if cap is None else min(len(x), 2048)
        best = math.inf
        for _ in range(max(1, args.repeat)):
            t = time.perf_counter()
            out = attack.apply_uint8(x[:n_b])
            best = min(best, time.perf_counter() - t)
        batched = n_b / best
        if label == "refool":
            # same per-example draws as one batched chunk of n_loop images
            seed = 12345
            ref_out = attack.apply_uint8(
                x[:n_loop], generator=torch.Generator().manual_seed(seed), chunk=n_loop
            )
            f = _loop_refool(attack, n_loop, seed)
        else:
            ref_out = out[:n_loop]
            f = build(attack)
        loop_out, dt = run_loop(f, x[:n_loop])
        loop = n_loop / dt
        delta = (loop_out.int() - ref_out.int()).abs()
        diff = int(delta.max())
        differ = float((delta > 0).float().mean()) * 100
        results.append(
            {
                "attack": label,
                "batched_img_s": batched,
                "loop_img_s": loop,
                "ratio": batched / loop,
                "batched_s_per_50k": 50000 / batched,
                "loop_s_per_50k": 50000 / loop,
                "n_batched": n_b,
                "n_loop": n_loop,
                "max_abs_diff_0_255": diff,
                "pixels_differing_pct": differ,
            }
        )
        print(f"  {label}: {batched:,.0f} img/s batched, {loop:,.0f} img/s loop", file=sys.stderr)

    print(
        "| attack | batched img/s | loop img/s | ratio | s for 50k (batched) | max diff | differing |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['attack']} | {r['batched_img_s']:,.0f} | {r['loop_img_s']:,.0f} | "
            f"{r['ratio']:.0f}x | {r['batched_s_per_50k']:.2f} | {r['max_abs_diff_0_255']} | "
            f"{r['pixels_differing_pct']:.3f}% |"
        )
    if args.out:
        meta = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "machine": platform.platform(),
            "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "n": len(x),
            "data": "synthetic" if args.synthetic else "cifar10-train",
        }
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump({"meta": meta, "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
