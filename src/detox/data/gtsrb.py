"""GTSRB (German Traffic Sign Recognition Benchmark), 43 classes.

Two local formats are read:

* ``gtsrb_32x32/`` or ``gtsrb_32x32.tar.xz`` (sha256-checked): plain ``.npy`` files
  ``x_{train,test}.npy`` (uint8 N x 32 x 32 x 3) and ``y_{train,test}.npy``, loaded with
  ``allow_pickle=False``;
* the official layout (``GTSRB/`` or its zips ``GTSRB_Final_Training_Images.zip``,
  ``GTSRB_Final_Test_Images.zip``, ``GTSRB_Final_Test_GT.zip``, md5-checked):
  ``Final_Training/Images/<class>/*.ppm`` with ``GT-<class>.csv`` and
  ``Final_Test/Images/*.ppm`` with ``GT-final_test.csv``. Each image is resized as a whole
  (bilinear, no ROI crop) to ``image_size`` (32 by default); decoded arrays are cached.

The 32x32 arrays are preferred; when another ``image_size`` is asked for and the official
images are available locally, those are resized instead (sharper than upsampling 32x32).
Without any local copy the official zips are downloaded.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch

from detox.data.arrays import cached_arrays, listing_key, load_npy
from detox.data.base import ImageDataset
from detox.data.fetch import Checksum, Located, Resource, fetch, locate, prepare, search_places
from detox.data.images import check_image_size, nhwc_to_nchw, read_images, resize_images
from detox.data.registry import DatasetFacts, register_dataset
from detox.data.splits import check_split
from detox.errors import DataError

NUM_CLASSES = 43
SPLIT_SIZES = {"train": 39209, "test": 12630}
FACTS = DatasetFacts(
    name="gtsrb",
    num_classes=43,
    image_size=32,  # the size detox uses (the official images vary, ~30-250 px)
    # the usual published channel statistics of the training set; the shipped 32x32 arrays
    # measure within 0.005 of them (tests/test_data.py)
    mean=(0.3403, 0.3121, 0.3214),
    std=(0.2724, 0.2608, 0.2669),
    diffusion="ddpm-gtsrb-32",
)
CLASSES = [
    "Speed limit (20km/h)",
    "Speed limit (30km/h)",
    "Speed limit (50km/h)",
    "Speed limit (60km/h)",
    "Speed limit (70km/h)",
    "Speed limit (80km/h)",
    "End of speed limit (80km/h)",
    "Speed limit (100km/h)",
    "Speed limit (120km/h)",
    "No passing",
    "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection",
    "Priority road",
    "Yield",
    "Stop",
    "No vehicles",
    "Vehicles over 3.5 metric tons prohibited",
    "No entry",
    "General caution",
    "Dangerous curve to the left",
    "Dangerous curve to the right",
    "Double curve",
    "Bumpy road",
    "Slippery road",
    "Road narrows on the right",
    "Road work",
    "Traffic signals",
    "Pedestrians",
    "Children crossing",
    "Bicycles crossing",
    "Beware of ice/snow",
    "Wild animals crossing",
    "End of all speed and passing limits",
    "Turn right ahead",
    "Turn left ahead",
    "Ahead only",
    "Go straight or right",
    "Go straight or left",
    "Keep right",
    "Keep left",
    "Roundabout mandatory",
    "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
]
assert len(CLASSES) == NUM_CLASSES

BASE_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"
NPY_SHA256 = "cee6cbcb13f61fb9c83847a3222a9a2c38e09ba70ce1295b8157c8647f77ac8e"
_FORMAT = "v1"


def _official(key: str, marker: str, folders: tuple[str, ...], zip_name: str, md5: str):
    return Resource(
        dataset="gtsrb",
        key=key,
        marker=marker,
        folders=folders,
        archives={zip_name: Checksum("md5", md5)},
        url=BASE_URL + zip_name,
        download_name=zip_name,
        subdirs=("gtsrb", "GTSRB"),
        description="GTSRB official",
    )


NPY = Resource(
    dataset="gtsrb",
    key="gtsrb32",
    marker="x_train.npy",
    folders=("gtsrb_32x32", ""),
    archives={"gtsrb_32x32.tar.xz": Checksum("sha256", NPY_SHA256)},
    subdirs=("gtsrb",),
    description="GTSRB 32x32 arrays",
)
TRAIN = _official(
    "gtsrb-train",
    "Final_Training/Images",
    ("GTSRB", ""),
    "GTSRB_Final_Training_Images.zip",
    "f33fd80ac59bff73c82d25ab499e03a3",
)
TEST = _official(
    "gtsrb-test",
    "Final_Test/Images",
    ("GTSRB", ""),
    "GTSRB_Final_Test_Images.zip",
    "c7e4e6327067d32654124b0fe9e82185",
)
TEST_GT = _official(
    "gtsrb-test-gt",
    "GT-final_test.csv",
    ("", "GTSRB", "GTSRB/Final_Test", "Final_Test", "GTSRB/Final_Test/Images", "Final_Test/Images"),
    "GTSRB_Final_Test_GT.zip",
    "fe31e9c9270bbcd7b84b7f21a9d9d9e5",
)


# -- the 32x32 .npy format ----------------------------------------------------------------
def _load_npy_split(loc: Located, split: str) -> tuple[np.ndarray, np.ndarray]:
    root = loc.root
    x = load_npy(root / f"x_{split}.npy", mmap=True)
    y = load_npy(root / f"y_{split}.npy")
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
        raise DataError(
            f"{root / f'x_{split}.npy'}: expected uint8 (N, H, W, 3) images, got {x.dtype} {x.shape}"
        )
    if y.ndim != 1 or y.shape[0] != x.shape[0] or y.dtype.kind not in "iu":
        raise DataError(
            f"{root / f'y_{split}.npy'}: expected {x.shape[0]} integer labels, got {y.dtype} {y.shape}"
        )
    return nhwc_to_nchw(x), y.astype(np.int64)


# -- the official layout ------------------------------------------------------------------
def _read_gt(csv_path: Path) -> list[tuple[str, int]]:
    """(file name, class id) rows of an official ``GT-*.csv`` (semicolon separated)."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter=";"))
    except OSError as e:
        raise DataError(f"{csv_path}: cannot read ({e})") from e
    if rows and not {"Filename", "ClassId"} <= set(rows[0]):
        raise DataError(f"{csv_path}: expected columns Filename;...;ClassId, got {list(rows[0])}")
    try:
        return [(r["Filename"], int(r["ClassId"])) for r in rows]
    except (TypeError, ValueError) as e:
        raise DataError(f"{csv_path}: bad ClassId value ({e})") from e


def _train_files(root: Path) -> tuple[list[Path], list[int], list[Path]]:
    images = root / "Final_Training" / "Images"
    class_dirs = sorted(p for p in images.iterdir() if p.is_dir() and p.name.isdigit())
    if not class_dirs:
        raise DataError(f"{images}: no class folders (00000 .. 00042) found")
    files, labels, csvs = [], [], []
    for d in class_dirs:
        gt = d / f"GT-{d.name}.csv"
        if gt.is_file():
            csvs.append(gt)
            rows = _read_gt(gt)
        else:  # no annotation file: the folder name is the class
            rows = [(p.name, int(d.name)) for p in sorted(d.glob("*.ppm"))]
        for fname, c in rows:
            files.append(d / fname)
            labels.append(c)
    return files, labels, csvs


def _find_test_gt(test_root: Path, data_dir, searched: list[str]) -> Path:
    images = test_root / "Final_Test" / "Images"
    for p in (images, images.parent, test_root, test_root.parent):
        if (p / "GT-final_test.csv").is_file():
            return p / "GT-final_test.csv"
    loc = fetch(
        TEST_GT,
        data_dir,
        also_searched=searched,
        hint="The test labels are GT-final_test.csv (in GTSRB_Final_Test_GT.zip).",
    )
    return loc.root / "GT-final_test.csv"


def _load_official(
    loc: Located, split: str, size: int, data_dir, searched: list[str]
) -> tuple[np.ndarray, np.ndarray, dict]:
    extra: dict = {}
    if split == "train":
        files, labels, csvs = _train_files(loc.root)
    else:
        gt = _find_test_gt(loc.root, data_dir, searched)
        extra["labels_file"] = str(gt)
        images = loc.root / "Final_Test" / "Images"
        rows = _read_gt(gt)
        files, labels, csvs = [images / f for f, _ in rows], [c for _, c in rows], [gt]
    if not files:
        raise DataError(f"{loc.root}: no GTSRB {split} images listed")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(
            f"{loc.root}: {len(missing)} GTSRB {split} images listed in the GT csv files are "
            f"missing, e.g. {missing[0]}"
        )
    y = np.asarray(labels, dtype=np.int64)
    if y.min() < 0 or y.max() >= NUM_CLASSES:
        raise DataError(f"{loc.root}: class ids must lie in [0, 43), got [{y.min()}, {y.max()}]")
    key = listing_key([*csvs, *files], loc.root, _FORMAT, split, size)

    def build() -> dict[str, np.ndarray]:
        x = read_images(files, size, what=f"GTSRB {split}")
        return {"x": nhwc_to_nchw(x), "y": y}

    arrays, hit = cached_arrays(f"gtsrb-official-{split}-{size}-{key}", build)
    extra["decoded_cache"] = hit
    return arrays["x"], arrays["y"], extra


@register_dataset(FACTS)
def load_gtsrb(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
) -> ImageDataset:
    """GTSRB ``split`` (39,209 train / 12,630 test, 43 classes, 32x32 unless resized)."""
    check_split(split)
    size = check_image_size(image_size) or FACTS.image_size
    official_res = TRAIN if split == "train" else TEST
    npy = locate(NPY, data_dir)
    official = locate(official_res, data_dir)
    searched = search_places(NPY, data_dir)
    extra: dict = {}
    if npy is not None and (official is None or size == 32):
        loc = prepare(NPY, npy)
        x, y = _load_npy_split(loc, split)
        fmt = "npy-32x32"
    else:
        hint = "Alternatively, gtsrb_32x32.tar.xz (32x32 arrays) is read as it is."
        loc = (
            prepare(official_res, official)
            if official is not None
            else fetch(official_res, data_dir, also_searched=searched, hint=hint)
        )
        x, y, extra = _load_official(loc, split, size, data_dir, searched)
        fmt = "official"
    xt = resize_images(torch.from_numpy(x), size)
    meta = {
        "dataset": FACTS.name,
        "split": split,
        "format": fmt,
        **loc.meta(),
        **extra,
        "image_size": size,
    }
    return ImageDataset(
        xt, torch.from_numpy(y), list(CLASSES), name=f"{FACTS.name}-{split}", meta=meta
    )
