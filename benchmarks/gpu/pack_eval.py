"""Pack the SampDetox table's victims and test images for a lent GPU (run here, on the CPU).

The table of docs/results.md ("SampDetox with the GPU-trained model") evaluates CIFAR-10
victims of the ``quick`` preset (``benchmarks/configs/sampdetox-gpu-model.toml``: 340
class-balanced clean test images, the 306 of them outside the target class triggered).
This script rebuilds each attack's test images exactly as ``detox bench`` does, loads the
victim that the table's cell JSON names (``--cells``) from the victim cache, checks that it
gives the undefended figures of that JSON on these images, and writes, under ``--out``:

* ``eval.npz``: ``clean_x`` / ``clean_y`` and, per attack A, ``A_x`` / ``A_y_true`` /
  ``A_y_target`` (uint8 images, int64 labels);
* ``victims/A/``: the victim's ``model.json`` and its weights as fp16 safetensors (half the
  bytes; the script checks that the fp16 copy gives the same undefended CA, PA and ASR);
* ``eval.json``: the victim keys and those undefended figures.

``train_and_check.py --eval`` purifies the images on the GPU with each SampDetox setting and
classifies them with every victim.

    DETOX_DATA_DIR=../shared/data python benchmarks/gpu/pack_eval.py --out .gpudata
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.torch import load_file, save_file

from detox.data.paths import cache_dir
from detox.models import load_checkpoint
from detox.pipeline import evaluate_backdoor, make_poisoned_set, resolve_configs

ATTACKS = ("badnets", "blended", "sig", "wanet", "bpp", "frequency")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=".gpudata")
    ap.add_argument("--attacks", nargs="+", default=list(ATTACKS))
    ap.add_argument("--cells", default="benchmarks/results/sampdetox_gpu_model/cells")
    args = ap.parse_args()
    out = Path(args.out)
    (out / "victims").mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    info: dict = {"preset": "quick", "dataset": "cifar10", "seed": 0, "attacks": {}}
    for attack in args.attacks:
        dcfg, tcfg, ecfg = resolve_configs("quick", "cifar10", 0, {"test_subset": 340})
        pset = make_poisoned_set(dcfg, attack, 0, None, "cpu", ecfg.test_limit)
        cell = json.loads(
            next(Path(args.cells).glob(f"cifar10__{attack}__quick__s0__*__none.json")).read_text()
        )
        src = cache_dir() / "victims" / cell["victim"]["key"]
        victim = load_checkpoint(src, "cpu")
        before = evaluate_backdoor(victim, pset)
        want = cell["evaluation"]
        if before["ca"] != want["ca"] or before["attacks"] != want["attacks"]:
            raise SystemExit(f"{attack}: the victim's figures differ from {cell['cell']}'s")
        folder = out / "victims" / attack
        state = load_file(str(src / "model.safetensors"))
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "model.json", folder / "model.json")
        save_file(
            {k: v.half() if v.is_floating_point() else v for k, v in state.items()},
            str(folder / "model.safetensors"),
        )
        half = load_checkpoint(folder, "cpu")
        after = evaluate_backdoor(half, pset)
        t = pset.triggered[attack]
        if "clean_x" not in arrays:
            arrays["clean_x"] = pset.test.x.numpy()
            arrays["clean_y"] = pset.test.y.numpy()
        elif not np.array_equal(arrays["clean_x"], pset.test.x.numpy()):
            raise SystemExit(f"{attack}: another clean test set than the first attack's")
        arrays[f"{attack}_x"] = t.x.numpy()
        arrays[f"{attack}_y_true"] = t.y_true.numpy()
        arrays[f"{attack}_y_target"] = t.y_target.numpy()
        info["attacks"][attack] = {
            "victim_key": cell["victim"]["key"],
            "fp32": {"ca": before["ca"], **before["attacks"][attack]},
            "fp16_copy": {"ca": after["ca"], **after["attacks"][attack]},
        }
        print(attack, info["attacks"][attack], flush=True)
    np.savez_compressed(out / "eval.npz", **arrays)
    (out / "eval.json").write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
