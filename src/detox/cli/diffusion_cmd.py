"""``detox diffusion train``: train a diffusion model and save it in the diffusers format.

    detox diffusion train --dataset cifar10 --preset quick --out weights/cifar10

The folder it writes (``unet/``, ``scheduler/``, ``model_index.json``) is what
``--diffusion`` of ``detox purify`` and the SampDetox purifier load. SampDetox only ever
noises to t <= max(t1, T2), so the ``quick`` preset trains on t < 120 only (``t_max``);
``paper`` trains on all 1000 steps. An interrupted run resumes from ``train_state.pt``.
"""

from __future__ import annotations

import argparse

from detox.cli import COMMANDS, add_common, float_in, positive_int


@COMMANDS.register("diffusion")
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diffusion", help="train diffusion models for purification")
    dsub = p.add_subparsers(dest="diffusion_command", required=True, metavar="ACTION")
    t = dsub.add_parser("train", help="train a diffusion model (diffusers format)")
    t.add_argument("--dataset", default="cifar10", help="registered name or a path")
    t.add_argument(
        "--steps", type=positive_int, default=None, help="optimiser steps (default: preset's)"
    )
    t.add_argument(
        "--max-minutes",
        type=float_in(0.0, 1e6, lo_open=True),
        default=None,
        help="stop and save after this",
    )
    add_common(t, out=True)
    t.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from detox.config import asdict, parse_overrides
    from detox.data import load_dataset
    from detox.diffusion import make_train_config, train_diffusion
    from detox.runs import resumable_output
    from detox.utils.device import resolve_device

    over = parse_overrides(args.overrides)
    cfg = make_train_config(
        args.preset,
        **over,
        **{k: v for k, v in {"steps": args.steps, "max_minutes": args.max_minutes,
                             "seed": args.seed, "progress": not args.quiet}.items() if v is not None},
    )  # fmt: skip
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, "train", data_dir=args.data_dir)
    with resumable_output(args.out, "train_state.pt", [args.dataset], args.force) as run:
        run.write_config(
            "diffusion train",
            {"preset": args.preset, "dataset": args.dataset, "device": str(device),
             "diffusion": asdict(cfg), "data_source": data.meta},
        )  # fmt: skip
        res = train_diffusion(data, cfg, device=device, out_dir=run.path)
        run.write_summary(
            {
                "steps": res.steps,
                "final_loss": res.final_loss,
                "seconds": round(res.seconds, 1),
                "images_per_second": round(res.images_per_second, 1),
                "stopped_early": res.stopped_early,
                "loss_log": res.loss_log,
            }
        )
    print(f"diffusion model: {res.steps} steps, final loss {res.final_loss:.4f} -> {run.path}")
    return 0
