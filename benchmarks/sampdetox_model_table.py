"""The SampDetox table of docs/results.md: the GPU-trained model next to the CPU-trained one.

Reads the cells of two bench runs (``detox bench benchmarks/configs/sampdetox-gpu-model.toml``
and ``sampdetox-quick.toml``) and prints, per attack, CA / PA / ASR (%) with no defense and
with SampDetox at the paper's setting (stride 5) and the authors' code setting (stride 10),
each run against its own victims and its own undefended row:

    python benchmarks/sampdetox_model_table.py benchmarks/results/sampdetox_gpu_model \\
        benchmarks/results/sampdetox_quick
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ATTACKS = ("badnets", "blended", "sig", "wanet", "bpp", "frequency")
COLUMNS = (
    ("none", "no defense"),
    ("sampdetox", "paper, s=5"),
    ("sampdetox__3aabcbcc", "code, s=10"),
)


def cell(root: Path, attack: str, suffix: str) -> str:
    f = root / "cells" / f"cifar10__{attack}__quick__s0__10b3eda7__{suffix}.json"
    if not f.is_file():
        return "not run"
    ev = json.loads(f.read_text())["evaluation"]
    a = ev["attacks"][attack]
    return f"{100 * ev['ca']:.2f} / {100 * a['pa']:.2f} / {100 * a['asr']:.2f}"


def main() -> None:
    new, old = Path(sys.argv[1]), Path(sys.argv[2])
    head = [f"GPU model: {c}" for _, c in COLUMNS] + [f"CPU model: {c}" for _, c in COLUMNS]
    print("| attack | " + " | ".join(head) + " |")
    print("|---" * (len(head) + 1) + "|")
    for attack in ATTACKS:
        row = [cell(new, attack, s) for s, _ in COLUMNS] + [
            cell(old, attack, s) for s, _ in COLUMNS
        ]
        print(f"| {attack} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
