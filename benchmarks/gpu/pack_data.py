"""Pack seeded subsets of the training images for a lent GPU machine (run here, on the CPU).

The device receives only the repository's working tree (64 MiB in all, see the device
README), so the images travel as losslessly compressed WebP files (cv2, quality > 100 =
lossless: the decoded pixels are the dataset's bytes) in one ``.npz`` per split: ``blob``
(the concatenated files), ``offsets`` (start of each file, plus the end), ``index`` (the
images' positions in the official split) and ``sha256`` (of the raw uint8 N,C,H,W array,
checked after decoding on the device). Every subset is drawn with a seeded permutation.

    DETOX_DATA_DIR=../shared/data python benchmarks/gpu/pack_data.py --out .gpudata

``.gpudata/`` is ignored by git (``.git/info/exclude``) and carried to the device with
``carry: [".gpudata", ".whl"]``; see benchmarks/gpu/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import cv2
import numpy as np
import torch

from detox.data import load_dataset

SPLITS = {  # name -> (dataset split, default count)
    "cifar10-train": (("cifar10", "train"), 20_000),
    "cifar10-test": (("cifar10", "test"), 1_024),
    "gtsrb-train": (("gtsrb", "train"), 10_000),
}


def encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N,C,H,W RGB -> (blob, offsets) of lossless WebP files."""
    parts = []
    for img in x:
        bgr = np.ascontiguousarray(img.transpose(1, 2, 0)[:, :, ::-1])
        ok, buf = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])
        if not ok:
            raise RuntimeError("cv2 could not encode a WebP image")
        parts.append(buf.ravel())
    offsets = np.cumsum([0] + [len(p) for p in parts]).astype(np.int64)
    return np.concatenate(parts), offsets


def decode(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The inverse of :func:`encode` (uint8 N,C,H,W RGB)."""
    imgs = [
        cv2.imdecode(blob[offsets[i] : offsets[i + 1]], cv2.IMREAD_COLOR)[:, :, ::-1]
        for i in range(len(offsets) - 1)
    ]
    return np.ascontiguousarray(np.stack(imgs).transpose(0, 3, 1, 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=".gpudata")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--start", type=int, default=0, help="skip this many of each permutation (other images)"
    )
    for name, (_, n) in SPLITS.items():
        ap.add_argument(f"--{name}", type=int, default=n, help=f"images (default {n})")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, (split, _) in SPLITS.items():
        n = getattr(args, name.replace("-", "_"))
        if n == 0:
            continue
        ds = load_dataset(*split)
        g = torch.Generator().manual_seed(args.seed)
        perm = torch.randperm(len(ds.x), generator=g)
        index = perm[args.start : args.start + n].sort().values.numpy()
        x = ds.x[torch.from_numpy(index)].numpy()
        blob, offsets = encode(x)
        assert np.array_equal(decode(blob, offsets), x), "lossless round trip failed"
        sha = hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()
        np.savez(out / f"{name}.npz", blob=blob, offsets=offsets, index=index, sha256=np.array(sha))
        print(f"{name}: {n} of {len(ds.x)} images, {blob.nbytes / 1e6:.1f} MB ({sha[:12]})")


if __name__ == "__main__":
    main()
