"""BaDLoss detection only (no retraining): per-attack loss trajectories and AUROC by epochs.

    python benchmarks/badloss_trajectories.py --suite badloss-cifar10 --preset quick \\
        --defense-preset paper --set pretrain_epochs=30 --out benchmarks/results/badloss_paper_epochs

Poisons the dataset with the suite (seeded as in ``detox bench``), draws the same probes
as a bench cell, pre-trains BaDLoss's model with the detector's settings (``--defense-preset``
plus ``--set key=value`` on the detector; ``--train-set key=value`` on the final run's
training config, whose model and epoch count the recipe reads), records every example's
loss after each epoch, and writes to ``--out``:

* ``summary.json``: per-attack AUROC after each epoch (one score per prefix of epochs, the
  epoch filter applied), the mean loss per epoch of the clean examples, the probes and each
  attack, the epochs kept, the settings and the wall time;
* ``badloss_trajectories.png`` (median and interquartile band), ``badloss_mean_trajectories.png``
  (mean), ``badloss_hist.png`` and ``badloss_roc.png``.
* with ``--save-trajectories``, ``trajectories.npz``: the (N, E) loss trajectories, the
  probe indices, every example's attack id (-1 = clean), the attack names and the epochs
  kept, so that other scorings can be compared on the same pre-training.

The result tells at how many epochs (and with which recipe) BaDLoss separates each attack
from the clean data (docs/results.md, BaDLoss section).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from detox.config import parse_overrides
from detox.defenses.detectors import DetectorContext, build_detector
from detox.pipeline import (
    detection_report,
    detector_figures,
    make_poisoned_set,
    resolve_configs,
    select_clean_probes,
)
from detox.runs import environment
from detox.utils.device import resolve_device
from detox.utils.io import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--suite", default="badloss-cifar10", help="attack spec or suite")
    ap.add_argument("--preset", default="quick", help="preset of the data and final training")
    ap.add_argument("--defense-preset", default="quick", help="preset of BaDLoss's settings")
    ap.add_argument("--set", dest="det_set", action="append", default=[], help="BaDLoss k=v")
    ap.add_argument("--train-set", action="append", default=[], help="data/training k=v")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument(
        "--spaces",
        default="",
        help="comma-separated trajectory spaces (loss, log-loss) to score the same "
        "trajectories in as well: per-attack AUROC of each in summary.json",
    )
    ap.add_argument(
        "--save-trajectories",
        action="store_true",
        help="also write trajectories.npz (trajectories, probes, attack_id, kept_epochs)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    dcfg, tcfg, ecfg = resolve_configs(
        args.preset, args.dataset, args.seed, parse_overrides(args.train_set)
    )
    tcfg.progress = not args.quiet
    det = build_detector("badloss", args.defense_preset, **parse_overrides(args.det_set))
    t0 = time.perf_counter()
    pset = make_poisoned_set(dcfg, args.suite, args.seed, args.data_dir, device, ecfg.test_limit)
    probes = select_clean_probes(
        pset, det.config.n_probes, args.seed, det.config.class_balanced_probes
    )
    ctx = DetectorContext.for_set(
        pset,
        probes=probes,
        train_config=tcfg,
        device=device,
        seed=args.seed,
        progress=not args.quiet,
    )
    scores = det.score(pset.as_dataset(), ctx)
    removed = det.cut(scores, ctx)
    protected = np.zeros(len(pset), bool)
    protected[np.asarray(probes, dtype=np.int64)] = True
    report = detection_report(scores, removed, pset, protected)
    detector_figures(out, "badloss", pset, {"scores": scores, "removed": removed})
    curves = det.plot_artifacts(ctx.artifacts, pset, out)
    history = ctx.artifacts.get("pretrain_history", [])
    if args.save_trajectories:
        np.savez_compressed(
            out / "trajectories.npz",
            trajectories=ctx.artifacts["trajectories"],
            probes=np.asarray(probes, dtype=np.int64),
            attack_id=pset.attack_id.numpy(),
            attack_names=np.asarray(pset.attack_names),
            kept_epochs=np.asarray(ctx.artifacts["kept_epochs"], dtype=np.int64),
        )
    atomic_write_json(
        out / "summary.json",
        {
            "command": "python benchmarks/badloss_trajectories.py " + " ".join(sys.argv[1:]),
            "dataset": args.dataset,
            "suite": args.suite,
            "seed": args.seed,
            "badloss": dataclasses.asdict(det.config),
            "pretrain_config": ctx.artifacts.get("pretrain_config"),
            "pretrain_train_acc": [h.get("train_acc") for h in history],
            "detection": report,
            **curves,
            "seconds": round(time.perf_counter() - t0, 1),
            "timing": ctx.artifacts.get("timing"),
            "environment": environment(),
            "device": str(device),
        },
    )
    by_space = _by_space(args.spaces, det.config, ctx.artifacts, pset)
    if by_space:
        summary = json.loads((out / "summary.json").read_text())
        summary["per_attack_auroc_by_space"] = by_space
        atomic_write_json(out / "summary.json", summary)
        for space, res in by_space.items():
            print(f"{space}: {res}")
    final = {k: round(v[-1], 3) for k, v in curves["per_attack_auroc_by_epochs"].items()}
    print(f"AUROC after the last epoch, per attack: {final}")
    print(f"written: {out}/summary.json")


def _by_space(spaces: str, config, artifacts: dict, pset) -> dict[str, dict[str, float]]:
    """AUROC of all poisons and of each attack's when the same trajectories are scored in
    each of ``spaces`` (``trajectory_space``), the detector's epochs kept."""
    from sklearn.metrics import roc_auc_score

    from detox.defenses.detectors.badloss import TRAJECTORY_SPACES, probe_mask, trajectory_scores

    traj, probes = artifacts["trajectories"], artifacts["probes"]
    ids = pset.attack_id.numpy()
    rows = ~probe_mask(len(traj), probes)
    out = {}
    for space in [s for s in spaces.split(",") if s]:
        if space not in TRAJECTORY_SPACES:
            raise SystemExit(f"--spaces: {space!r} is not one of {', '.join(TRAJECTORY_SPACES)}")
        cfg = dataclasses.replace(config, trajectory_space=space)
        s, _ = trajectory_scores(traj, traj[probes], cfg, kept_epochs=artifacts["kept_epochs"])
        res = {"all": float(roc_auc_score(ids[rows] >= 0, s[rows]))}
        for i, name in enumerate(pset.attack_names):
            m = rows & ((ids == i) | (ids < 0))
            res[str(name)] = float(roc_auc_score(ids[m] == i, s[m]))
        out[space] = {k: round(v, 4) for k, v in res.items()}
    return out


if __name__ == "__main__":
    main()
