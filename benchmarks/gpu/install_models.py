"""Install the diffusion models a device call trained as detox's shipped models.

Reads ``FOLDER/<dataset>/unet-0000k-of-00002.safetensors`` + ``record.json`` (what
``train_and_check.py`` writes to ``$OUT``), checks the shards against the recorded UNet
config, and writes ``src/detox/weights/ddpm-<dataset>-32/`` in the diffusers pipeline layout
with the weights as one fp16 safetensors file and ``detox_diffusion.json`` holding the
training record (settings, data subset and checksum, device, loss log):

    python benchmarks/gpu/install_models.py /work/.device/1 --datasets cifar10 gtsrb
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from detox.diffusion.backend import DiffusionModel, _scheduler_from_config, save_diffusion

WEIGHTS = Path(__file__).resolve().parents[2] / "src" / "detox" / "weights"


def install(src: Path, dataset: str, dest_root: Path) -> Path:
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    rec = json.loads((src / "record.json").read_text())
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(src.glob("unet-*-of-*.safetensors")):
        state.update(load_file(str(shard)))
    cfg = {k: v for k, v in rec["unet_config"].items() if not k.startswith("_")}
    unet = UNet2DModel.from_config(cfg)
    missing, unexpected = (
        unet.load_state_dict({k: v.float() for k, v in state.items()}, strict=True),
        None,
    )
    del missing, unexpected
    scheduler = _scheduler_from_config(rec["scheduler_config"], str(src / "record.json"))
    train = {k: v for k, v in rec.items() if k not in ("unet_config", "scheduler_config", "meta")}
    train["data"] = {
        **rec["data"],
        "subset": f"{rec['data']['n']} images of the official {dataset} training split, "
        "drawn by benchmarks/gpu/pack_data.py (torch.randperm, seed 0), lossless WebP",
    }
    model = DiffusionModel(unet.half(), scheduler, dict(rec["meta"]), str(src))
    dest = dest_root / f"ddpm-{dataset}-32"
    if rec.get("config", {}).get("init_from"):
        # a continued training: keep the record of the run it started from (the model in
        # ``dest`` is the one it was initialised with; the device call carried it)
        prev = json.loads((dest / "detox_diffusion.json").read_text())
        train["continued_from"] = {"train": prev["train"], "loss_log": prev.get("loss_log", [])}
        train["total_steps"] = rec["steps"] + prev["train"].get(
            "total_steps", prev["train"]["steps"]
        )
    if dest.exists():
        shutil.rmtree(dest)
    save_diffusion(model, dest, {"train": train, "loss_log": rec.get("loss_log", [])})
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", help="the device call's $OUT, fetched here")
    ap.add_argument("--datasets", nargs="+", default=["cifar10", "gtsrb"])
    ap.add_argument("--to", default=str(WEIGHTS))
    args = ap.parse_args()
    for ds in args.datasets:
        dest = install(Path(args.folder) / ds, ds, Path(args.to))
        size = (dest / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
        print(f"{ds}: {dest} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
