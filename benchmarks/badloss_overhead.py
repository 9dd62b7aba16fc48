"""BaDLoss detection-phase overhead: (pre-training with per-epoch loss recording + k-NN
scoring) / (plain training for the same epochs with the same config). Goal: <= 1.3x.

The detection phase is everything :meth:`BaDLoss.score` does: build a fresh model, train on
the N examples + the probe copies without augmentation while recording every example's
eval-mode loss after each epoch, filter epochs, k-NN scoring. The denominators are plain
training runs on the N examples for the same number of epochs:

* ``train_same_config``: the pre-training config exactly (no augmentation), no recording;
* ``train_final_config``: the final run's config (with augmentation) cut to the same epochs.

Wall and process CPU seconds are both reported (CPU time is steadier on shared cores);
with ``--repeats`` the phases are interleaved and the minimum of each is kept.

A small dirty-label patch poisoning is added so the run also reports the detection AUROC
(informational; few epochs and a small subset are not the paper's setting).

    python benchmarks/badloss_overhead.py --n 5000 --epochs 3 --out badloss_overhead.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=5000, help="training images (class-balanced subset)")
    p.add_argument(
        "--epochs", type=int, default=3, help="pre-training epochs (and baseline epochs)"
    )
    p.add_argument("--final-epochs", type=int, default=100, help="the final run's epochs (LR span)")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default=None, help="data directory (default: DETOX_DATA_DIR)")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--n-probes", type=int, default=250)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--poison-frac", type=float, default=0.05, help="dirty-label patch poisons")
    p.add_argument("--repeats", type=int, default=1, help="timed repeats (the minimum is kept)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON file to write")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from detox.config import make_config
    from detox.data import ImageDataset, load_dataset, stratified_subsample
    from detox.defenses.detectors import DetectorContext, build_detector
    from detox.defenses.detectors.badloss import pretrain_config
    from detox.metrics import detection_metrics
    from detox.models import build_model
    from detox.training import TrainConfig, train
    from detox.utils.device import resolve_device

    device = resolve_device(args.device)
    full = load_dataset(args.dataset, "train", data_dir=args.data_dir)
    idx = stratified_subsample(full.y, args.n, seed=args.seed, num_classes=full.num_classes)
    x, y = full.x[idx].clone(), full.y[idx].clone()
    rng = np.random.default_rng(args.seed)
    n_poison = int(args.poison_frac * len(y))
    poison = np.sort(rng.choice(np.flatnonzero(y.numpy() != 0), n_poison, replace=False))
    patch = torch.zeros(5, 5, dtype=torch.uint8)
    patch[::2, ::2] = 255
    patch[1::2, 1::2] = 255
    x[poison, :, -5:, -5:] = patch
    y[poison] = 0
    data = ImageDataset(x, y, full.classes, f"{args.dataset}-bench", dict(full.meta))
    is_poison = np.zeros(len(y), bool)
    is_poison[poison] = True

    final = make_config(
        TrainConfig,
        "quick",
        model=args.model,
        width=args.width,
        batch_size=args.batch_size,
        epochs=args.final_epochs,
        seed=args.seed,
        progress=False,
    )
    det = build_detector(
        "badloss", "paper", pretrain_epochs=args.epochs, n_probes=args.n_probes, k=args.k
    )
    probes = det.select_probes(data, seed=args.seed, clean_mask=~is_poison)
    same = pretrain_config(final, det.config, seed=args.seed, progress=False)
    final_cut = dataclasses.replace(final, epochs=args.epochs)

    def new_model():
        return build_model(args.model, data.num_classes, width=args.width, dataset=args.dataset)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # warm-up (allocator, oneDNN / cuDNN kernels)
    train(new_model(), x[:512], y[:512], dataclasses.replace(same, epochs=1), device=device)

    def timed(fn):
        """(wall seconds, process CPU seconds) of fn(); CPU time is less sensitive to other
        processes sharing the cores."""
        sync()
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        sync()
        return (time.perf_counter() - w0, time.process_time() - c0), out

    def plain(cfg):
        return lambda: train(new_model(), data.x, data.y, cfg, device=device)

    t_same, t_final, t_det, last_ctx, last_scores = [], [], [], None, None
    for _ in range(max(1, args.repeats)):
        t_same.append(timed(plain(same))[0])
        ctx = DetectorContext(
            probes=probes, train_config=final, device=device, seed=args.seed, progress=False
        )
        t, scores = timed(lambda ctx=ctx: det.score(data, ctx))
        t_det.append(t)
        last_ctx, last_scores = ctx, scores
        t_final.append(timed(plain(final_cut))[0])

    timing = last_ctx.artifacts["timing"]
    det_s, same_s, final_s = (min(t[0] for t in ts) for ts in (t_det, t_same, t_final))
    det_c, same_c, final_c = (min(t[1] for t in ts) for ts in (t_det, t_same, t_final))
    metrics = detection_metrics(last_scores, is_poison, det.cut(last_scores, probes))
    result = {
        "n": len(data),
        "n_probes": len(probes),
        "epochs": args.epochs,
        "model": args.model,
        "width": args.width,
        "batch_size": args.batch_size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "repeats": max(1, args.repeats),
        "seconds": {
            "detection_total": det_s,
            "pretrain_incl_recording": timing["pretrain"],
            "recording": timing["record"],
            "knn_and_filter": timing["knn"],
            "train_same_config": same_s,
            "train_final_config": final_s,
        },
        "cpu_seconds": {
            "detection_total": det_c,
            "train_same_config": same_c,
            "train_final_config": final_c,
        },
        "ratio_vs_same_config": det_s / same_s,
        "ratio_vs_final_config": det_s / final_s,
        "cpu_ratio_vs_same_config": det_c / same_c,
        "cpu_ratio_vs_final_config": det_c / final_c,
        "all_runs_wall_cpu": {"detection": t_det, "same": t_same, "final": t_final},
        "goal": 1.3,
        "auroc": metrics["auroc"],
        "tpr_at_40pct": metrics["tpr"],
        "kept_epochs": last_ctx.artifacts["kept_epochs"],
    }
    rows = [
        ("plain training, same config (no aug)", same_s, 1.0),
        ("plain training, final config (aug)", final_s, final_s / same_s),
        ("detection phase total", det_s, det_s / same_s),
        ("  pre-training incl. recording", timing["pretrain"], timing["pretrain"] / same_s),
        ("  of which loss recording", timing["record"], timing["record"] / same_s),
        ("  epoch filter + k-NN scoring", timing["knn"], timing["knn"] / same_s),
    ]
    print(
        f"BaDLoss overhead: n={len(data)} (+{len(probes)} probe copies), {args.epochs} epochs, "
        f"{args.model} width {args.width}, batch {args.batch_size}, {device} "
        f"({torch.get_num_threads()} threads)"
    )
    print(f"{'phase':<40}{'seconds':>10}{'x same':>9}")
    for name, s, r in rows:
        print(f"{name:<40}{s:>10.2f}{r:>9.3f}")
    print(
        f"ratio detection / plain training: {result['ratio_vs_same_config']:.3f} (same config), "
        f"{result['ratio_vs_final_config']:.3f} (final config); goal <= 1.3"
    )
    print(
        f"process CPU-time ratio: {result['cpu_ratio_vs_same_config']:.3f} (same config), "
        f"{result['cpu_ratio_vs_final_config']:.3f} (final config)"
    )
    print(f"detection AUROC {metrics['auroc']:.3f}, TPR at the 40% cut {metrics['tpr']:.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
