"""Does SampDetox's stage 2 find BadNets' patch? Per-pixel levels on and off the trigger.

For ``--n`` CIFAR-10 test images with BadNets' test-time trigger, purified with the
shipped diffusion model at each setting, prints the mean stage-2 level ``t2`` on the
trigger's pixels and elsewhere, how much stage 1 changed the trigger's pixels (sum over
channels of |stage 1 - triggered|, in [0, 3]), and how much of the trigger is left
(|purified - clean| on its pixels):

    python benchmarks/sampdetox_localisation.py --n 16 --threads 1
"""

from __future__ import annotations

import argparse
import json

import torch

from detox.attacks import make_attack
from detox.data import load_dataset
from detox.defenses.purifiers import build_purifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x = load_dataset("cifar10", "test").x[: args.n].float() / 255
    xt = make_attack("badnets").trigger(x, train=False)
    on = (xt - x).abs().sum(1).amax(0) > 0  # the trigger's pixels (H, W)
    rows = {}
    for label, preset, kw in (
        ("paper, stride 5", "paper", {"stride": 5}),
        ("paper", "paper", {}),
        ("code, stride 10", "code", {"stride": 10}),
    ):
        p = build_purifier("sampdetox", preset, **kw).use_dataset_defaults("cifar10")
        o = p.purify(xt, return_intermediates=True)
        rows[label] = {
            "t2_on_trigger": float(o.t2[:, on].float().mean()),
            "t2_elsewhere": float(o.t2[:, ~on].float().mean()),
            "stage1_change_on_trigger": float((o.stage1 - xt).abs().sum(1)[:, on].mean()),
            "trigger_left": float((o.x - x).abs().sum(1)[:, on].mean()),
            "trigger_at_input": float((xt - x).abs().sum(1)[:, on].mean()),
        }
        r = rows[label]
        print(
            f"{label:<16} t2 on trigger {r['t2_on_trigger']:6.1f}, elsewhere "
            f"{r['t2_elsewhere']:5.1f}; stage 1 changed the trigger by "
            f"{r['stage1_change_on_trigger']:.3f}; |purified - clean| on it "
            f"{r['trigger_left']:.3f} (input {r['trigger_at_input']:.3f})"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"n": args.n, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
