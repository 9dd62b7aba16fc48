"""UltraClean scoring speed: detox's batched pipeline vs the authors' per-image structure.

Same model (ResNet-18, width 0.25), same denoisers and the same scores, measured as
scored training images per second:

* ``authors loop``: the structure of ``dirty-label attacks/Denoise.py``: for every image,
  ``scipy.ndimage.median_filter(x, size=(2, 2, 3), mode='reflect')``, OpenCV's
  ``fastNlMeansDenoisingColored(x, None, 5, 5, 7, 13)`` and three forward passes with batch
  size 1 (original, median, NLM). Run on the first ``--baseline-n`` images; images/s is
  per image, so it does not depend on n. It runs with ``--loop-threads`` torch and OpenCV
  threads (default 1: on small CPUs, batch-1 inference of a small model is fastest
  single-threaded, and with busy cores multi-threaded OpenMP regions stall; 1 keeps the
  comparison conservative).
* ``detox``: :class:`detox.defenses.detectors.ultraclean.UltraClean` ``score``: median
  filter batched in torch on the device, NLM on mosaics over a thread pool, pipelined with
  batched float32 forward passes.

Both give the same scores (the maximum difference on the baseline images is reported).
Each is timed ``--repeats`` times and the fastest run is reported (shared machines are
noisy); CPU ms/image (process CPU time) shows the work done independently of core count.

Usage::

    python benchmarks/ultraclean_speed.py --n 2000 --out ultraclean_speed.json
    python benchmarks/ultraclean_speed.py --checkpoint runs/badnets/model   # a trained model

Without ``--checkpoint`` a seeded random-init model is used: speed does not depend on the
weights. Images are CIFAR-10 training images (uniform noise when the data is missing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy import ndimage

from detox.defenses.detectors import DetectorContext, build_detector
from detox.defenses.detectors.ultraclean import fold_batchnorm
from detox.models import build_model, load_checkpoint
from detox.utils.device import resolve_device


def load_images(n: int, data_dir: str | None) -> tuple[torch.Tensor, str]:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    if data_dir is None and shared.is_dir():  # the project's data folder, as in the tests
        os.environ.setdefault("DETOX_DATA_DIR", str(shared))
    try:
        from detox.data import load_dataset, stratified_subsample

        ds = load_dataset("cifar10", "train", data_dir=data_dir)
        idx = stratified_subsample(ds.y, n, seed=0, num_classes=ds.num_classes)
        return ds.x[idx], "cifar10-train"
    except Exception as e:  # data not available: speed does not depend on content
        print(f"(no CIFAR-10: {type(e).__name__}: {e}; using random images)", file=sys.stderr)
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8), "uniform-noise"


def authors_loop(model, x: torch.Tensor, device: torch.device) -> tuple[np.ndarray, dict]:
    """The authors' structure, image by image; returns scores and seconds per part."""
    parts = {"median": 0.0, "nlm": 0.0, "forward": 0.0}
    scores = []
    model.eval()
    with torch.no_grad():
        for img in x:
            a = np.ascontiguousarray(img.permute(1, 2, 0).numpy())  # HWC, RGB as loaded
            t = time.perf_counter()
            med = ndimage.median_filter(a, size=(2, 2, 3), mode="reflect")
            t1 = time.perf_counter()
            nlm = cv2.fastNlMeansDenoisingColored(a, None, 5, 5, 7, 13)
            t2 = time.perf_counter()
            z = [
                model(torch.from_numpy(v).permute(2, 0, 1)[None].float().div(255).to(device))
                .double()
                .cpu()
                for v in (a, med, nlm)
            ]
            t3 = time.perf_counter()
            scores.append(float((z[0] - z[1]).abs().sum() + (z[0] - z[2]).abs().sum()))
            parts["median"] += t1 - t
            parts["nlm"] += t2 - t1
            parts["forward"] += t3 - t2
    return np.asarray(scores), parts


def detox_parts(det, model, x: torch.Tensor, device: torch.device, workers: int) -> dict:
    """Seconds of each part of detox's scoring run alone (no pipelining)."""
    from concurrent.futures import ThreadPoolExecutor

    from detox.training import predict_logits

    bs, chunk = det.config.batch_size, det.config.nlm_chunk
    parts = {}
    t = time.perf_counter()
    for i in range(0, len(x), bs):
        det.median(x[i : i + bs].to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    parts["median"] = time.perf_counter() - t
    prev = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        t = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(det.nlm, [x[i : i + chunk] for i in range(0, len(x), chunk)]))
        parts["nlm"] = time.perf_counter() - t
    finally:
        cv2.setNumThreads(prev)
    if det.config.fold_batchnorm:  # as score() does
        model = fold_batchnorm(model)
    t = time.perf_counter()
    for _ in range(3):
        predict_logits(model, x, bs, device=device, amp=False)
    parts["forward"] = time.perf_counter() - t
    return parts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="images scored by detox")
    ap.add_argument(
        "--baseline-n", type=int, default=300, help="images run through the per-image loop"
    )
    ap.add_argument("--data-dir", default=None, help="folder with the CIFAR-10 archive")
    ap.add_argument("--checkpoint", default=None, help="a detox checkpoint (default: random)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the detector's")
    ap.add_argument("--workers", type=int, default=None, help="NLM threads (default: all)")
    ap.add_argument(
        "--loop-threads", type=int, default=1, help="torch and OpenCV threads of the loop"
    )
    ap.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each; the fastest is reported"
    )
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    x, source = load_images(args.n, args.data_dir)
    if args.checkpoint:
        model = load_checkpoint(args.checkpoint, device)
        model_desc = f"checkpoint {args.checkpoint}"
    else:
        torch.manual_seed(0)
        model = build_model("resnet18", 10, width=0.25, dataset="cifar10").to(device).eval()
        model = model.to(memory_format=torch.channels_last)  # as detox.training leaves it
        model_desc = "resnet18 width 0.25, random init"

    workers = args.workers or len(os.sched_getaffinity(0))
    det = build_detector("ultraclean", batch_size=args.batch_size, workers=workers)
    bs = det.config.batch_size
    ctx = DetectorContext(model=model, device=device, progress=False)
    det.score(x[:8], ctx)  # warm-up (allocations, thread pools)
    runs = []
    for _ in range(args.repeats):
        t, c = time.perf_counter(), time.process_time()
        scores = det.score(x, ctx)
        runs.append((time.perf_counter() - t, time.process_time() - c))
    detox_s, detox_cpu = min(runs)
    dparts = detox_parts(det, model, x, device, workers)

    nb = min(args.baseline_n, len(x))
    threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(args.loop_threads)
    cv2.setNumThreads(args.loop_threads)
    try:
        authors_loop(model, x[:2], device)  # warm-up
        loop_runs = []
        for _ in range(args.repeats):
            t, c = time.perf_counter(), time.process_time()
            ref, parts = authors_loop(model, x[:nb], device)
            loop_runs.append((time.perf_counter() - t, time.process_time() - c, parts))
        loop_s, loop_cpu, parts = min(loop_runs, key=lambda r: r[0])
    finally:
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])
    diff = float(np.max(np.abs(ref - scores[:nb]))) if nb else float("nan")

    detox_ips, loop_ips = len(x) / detox_s, nb / loop_s
    ratio = detox_ips / loop_ips
    rows = [
        (f"authors loop (b=1, {args.loop_threads} thread(s))", nb, loop_s, loop_cpu),
        (f"detox (b={bs}, {workers} NLM threads)", len(x), detox_s, detox_cpu),
    ]
    print(f"\nUltraClean scoring, {source}, {model_desc}, device {device}\n")
    print("| method | images | seconds | images/s | CPU ms/image |")
    print("|---|---:|---:|---:|---:|")
    for name, n, sec, cpu in rows:
        print(f"| {name} | {n} | {sec:.2f} | {n / sec:.1f} | {cpu / n * 1e3:.2f} |")
    print(f"\nspeed-up: {ratio:.1f}x (goal >= 5x); max |score difference| = {diff:.2e}")
    per = {k: v / max(nb, 1) * 1e3 for k, v in parts.items()}
    dper = {k: v / len(x) * 1e3 for k, v in dparts.items()}
    print("\nparts run alone, ms/image (detox overlaps NLM with the forward passes):\n")
    print("| part | authors loop | detox | ratio |")
    print("|---|---:|---:|---:|")
    for k in per:
        print(f"| {k} | {per[k]:.2f} | {dper[k]:.2f} | {per[k] / max(dper[k], 1e-12):.1f}x |")
    result = {
        "benchmark": "ultraclean_speed",
        "source": source,
        "model": model_desc,
        "device": str(device),
        "n": len(x),
        "baseline_n": nb,
        "batch_size": bs,
        "workers": det.config.workers,
        "loop_threads": args.loop_threads,
        "repeats": args.repeats,
        "detox_seconds": detox_s,
        "detox_seconds_all": [r[0] for r in runs],
        "loop_seconds_all": [r[0] for r in loop_runs],
        "detox_images_per_second": detox_ips,
        "loop_seconds": loop_s,
        "loop_images_per_second": loop_ips,
        "detox_cpu_ms_per_image": detox_cpu / len(x) * 1e3,
        "loop_cpu_ms_per_image": loop_cpu / max(nb, 1) * 1e3,
        "load_average": os.getloadavg(),
        "loop_ms_per_image": per,
        "detox_parts_ms_per_image": dper,
        "speedup": ratio,
        "max_abs_score_difference": diff,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "opencv": cv2.__version__,
            "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        },
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
