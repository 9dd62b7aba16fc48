"""``PoisonedSet``: the one data contract between attacks, training and defenses.

A poisoned training set holds, for every example, the image and label **as trained**,
the true label, and the id of the attack that poisoned it (-1 = clean). ``attacks`` lists
the attack specs (name, parameters, target map, count) in id order. For each attack, the
triggered test set used for ASR/PA can be stored alongside (``triggered``), together with
the clean test set (``test``), so one artefact is enough to evaluate a defense.

On disk (``save``/``load``) the artefact is a folder of plain ``.npy`` arrays (readable by
any NumPy, loaded with ``allow_pickle=False``) and ``manifest.json`` with the format
version, seed, classes, attack specs, source checksums and the sha256 of every array.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detox.data.base import ImageDataset, validate_images_labels
from detox.errors import DataError
from detox.utils.io import atomic_write_bytes, atomic_write_json, read_json, sha256_file

FORMAT = "detox.poisoned-set"
FORMAT_VERSION = 1


@dataclass
class TriggeredSet:
    """Test images with one attack's trigger applied (true label != the attack's target).

    ``y_true`` are the true labels (for PA), ``y_target`` the labels the attacker wants
    (for ASR), ``index`` the positions in the clean test set the images came from.
    """

    x: torch.Tensor
    y_true: torch.Tensor
    y_target: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass
class PoisonedSet:
    """A (possibly) poisoned training set with full ground truth. See the module docstring."""

    x: torch.Tensor
    y: torch.Tensor
    y_true: torch.Tensor
    attack_id: torch.Tensor
    classes: list[str]
    attacks: list[dict[str, Any]] = field(default_factory=list)
    seed: int = 0
    source: dict[str, Any] = field(default_factory=dict)
    test: ImageDataset | None = None
    triggered: dict[str, TriggeredSet] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = len(self.classes)
        self.x, self.y = validate_images_labels(self.x, self.y, k, "PoisonedSet")
        _, self.y_true = validate_images_labels(self.x, self.y_true, k, "PoisonedSet.y_true")
        self.attack_id = torch.as_tensor(self.attack_id, dtype=torch.int64)
        if self.attack_id.shape != self.y.shape:
            raise DataError(
                f"PoisonedSet.attack_id must have shape {tuple(self.y.shape)}, got {tuple(self.attack_id.shape)}"
            )
        n_att = len(self.attacks)
        if len(self.attack_id) and (
            int(self.attack_id.min()) < -1 or int(self.attack_id.max()) >= n_att
        ):
            raise DataError(f"PoisonedSet.attack_id must lie in [-1, {n_att}), one id per attack")

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_clean(
        cls, train: ImageDataset, seed: int = 0, test: ImageDataset | None = None
    ) -> PoisonedSet:
        """The no-attack case: every example clean, labels as given."""
        return cls(
            x=train.x,
            y=train.y.clone(),
            y_true=train.y.clone(),
            attack_id=torch.full((len(train),), -1, dtype=torch.int64),
            classes=list(train.classes),
            attacks=[],
            seed=seed,
            source=dict(train.meta),
            test=test,
        )

    # -- views ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_poisoned(self) -> torch.Tensor:
        """Boolean mask of poisoned examples (any attack)."""
        return self.attack_id >= 0

    @property
    def attack_names(self) -> list[str]:
        return [a["name"] for a in self.attacks]

    def as_dataset(self, name: str = "poisoned-train") -> ImageDataset:
        """The training set as trained (images and labels the victim sees)."""
        return ImageDataset(self.x, self.y, list(self.classes), name, dict(self.source))

    def subset(self, keep: torch.Tensor | np.ndarray) -> PoisonedSet:
        """Keep examples by boolean mask or index list (attack specs and tests carried over)."""
        keep = torch.as_tensor(np.asarray(keep))
        idx = keep.nonzero().flatten() if keep.dtype == torch.bool else keep.to(torch.int64)
        return PoisonedSet(
            self.x[idx],
            self.y[idx],
            self.y_true[idx],
            self.attack_id[idx],
            list(self.classes),
            [dict(a) for a in self.attacks],
            self.seed,
            dict(self.source),
            self.test,
            dict(self.triggered),
        )

    def summary(self) -> dict[str, Any]:
        counts = torch.bincount(self.attack_id + 1, minlength=len(self.attacks) + 1)
        return {
            "n": len(self),
            "n_clean": int(counts[0]),
            "n_poisoned": int(counts[1:].sum()),
            "per_attack": {a["name"]: int(counts[i + 1]) for i, a in enumerate(self.attacks)},
            "classes": len(self.classes),
            "seed": self.seed,
        }

    # -- artefact ------------------------------------------------------------------------
    def _arrays(self) -> dict[str, torch.Tensor]:
        arrays = {"x": self.x, "y": self.y, "y_true": self.y_true, "attack_id": self.attack_id}
        if self.test is not None:
            arrays["test_x"], arrays["test_y"] = self.test.x, self.test.y
        for name, t in self.triggered.items():
            for key in ("x", "y_true", "y_target", "index"):
                arrays[f"triggered.{name}.{key}"] = getattr(t, key)
        return arrays

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write the arrays and ``manifest.json`` into ``out_dir`` (manifest last, atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        entries = {}
        for key, t in self._arrays().items():
            arr = t.cpu().numpy()
            fname = f"{key}.npy"
            import io

            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            atomic_write_bytes(out / fname, buf.getvalue())
            entries[key] = {
                "file": fname,
                "shape": list(arr.shape),
                "dtype": str(arr.dtype),
                "sha256": sha256_file(out / fname),
            }
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "seed": self.seed,
            "classes": self.classes,
            "attacks": self.attacks,
            "source": self.source,
            "summary": self.summary(),
            "layout": {
                "x": "uint8 (N, C, H, W) images as trained",
                "y": "int64 labels as trained",
                "y_true": "int64 true labels",
                "attack_id": "int64 index into 'attacks', -1 = clean",
                "triggered.<attack>.*": "triggered test set of each attack (for ASR/PA)",
            },
            "arrays": entries,
        }
        atomic_write_json(out / "manifest.json", manifest)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> PoisonedSet:
        """Load an artefact written by :meth:`save`; checks every array's sha256."""
        root = Path(path)
        mf = root / "manifest.json"
        if not mf.is_file():
            raise DataError(f"{root}: not a PoisonedSet artefact (no manifest.json)")
        manifest = read_json(mf)
        if manifest.get("format") != FORMAT:
            raise DataError(f"{mf}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
        if int(manifest.get("version", 0)) > FORMAT_VERSION:
            raise DataError(
                f"{mf}: artefact version {manifest['version']} is newer than this detox ({FORMAT_VERSION})"
            )
        arrays: dict[str, torch.Tensor] = {}
        inside = root.resolve()
        entries = manifest.get("arrays")
        if not isinstance(entries, dict) or not entries:
            raise DataError(f"{mf}: 'arrays' must map array names to their files")
        for key, e in entries.items():
            name = e.get("file") if isinstance(e, dict) else None
            # a shared artefact must never make detox read (or hash) a file outside it
            if (
                not isinstance(name, str)
                or not name
                or Path(name).name != name
                or name in (".", "..")
                or "\\" in name
            ):
                raise DataError(
                    f"{mf}: array {key!r} names file {name!r}: expected a plain file name "
                    "inside the artefact folder (no path, no '..')"
                )
            f = root / name
            if f.resolve().parent != inside:
                raise DataError(
                    f"{mf}: array {key!r}: {name!r} resolves outside the artefact folder "
                    f"({f.resolve()}); refusing to read it"
                )
            if not f.is_file():
                raise DataError(f"{root}: array file {name} listed in the manifest is missing")
            if verify:
                actual = sha256_file(f)
                if actual != e.get("sha256"):
                    raise DataError(
                        f"{f}: sha256 mismatch (expected {e['sha256']}, actual {actual})"
                    )
            try:
                arr = np.load(f, allow_pickle=False)
            except (ValueError, OSError, EOFError) as err:
                why = (
                    "it holds pickled Python objects, which are never loaded"
                    if "allow_pickle" in str(err) or "Object arrays" in str(err)
                    else f"not a readable .npy file: {err}"
                )
                raise DataError(f"{f}: array {key!r} cannot be loaded ({why})") from err
            if arr.dtype.kind not in "biuf":
                raise DataError(f"{f}: array {key!r} has dtype {arr.dtype}; expected numbers")
            arrays[key] = torch.from_numpy(arr)
        try:
            return cls._from_arrays(manifest, arrays)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
            raise DataError(
                f"{mf}: the manifest and its arrays do not form a PoisonedSet "
                f"({type(err).__name__}: {err})"
            ) from err

    @classmethod
    def _from_arrays(cls, manifest: dict, arrays: dict[str, torch.Tensor]) -> PoisonedSet:
        classes = list(manifest["classes"])
        test = None
        if "test_x" in arrays:
            test = ImageDataset(arrays["test_x"], arrays["test_y"], classes, "test")
        triggered: dict[str, TriggeredSet] = {}
        for a in manifest["attacks"]:
            name = a["name"]
            if f"triggered.{name}.x" in arrays:
                triggered[name] = TriggeredSet(
                    *(arrays[f"triggered.{name}.{k}"] for k in ("x", "y_true", "y_target", "index"))
                )
        return cls(
            arrays["x"],
            arrays["y"],
            arrays["y_true"],
            arrays["attack_id"],
            classes,
            list(manifest["attacks"]),
            int(manifest["seed"]),
            dict(manifest.get("source", {})),
            test,
            triggered,
        )
