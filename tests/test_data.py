"""Dataset loaders: real CIFAR-10 / GTSRB from the shared data dir, fake layouts in tmp.

No test touches the network: ``DETOX_OFFLINE`` is set for every test here, and the one
test of the download path replaces ``urlopen``.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detox.data import fetch, images, load_dataset
from detox.data.cifar10 import MEMBER_MD5
from detox.data.fetch import Checksum, MissingDataError, Resource
from detox.data.images import resize_images
from detox.data.info import dataset_info, format_info
from detox.data.safe_pickle import safe_load, safe_loads
from detox.errors import ChecksumError, ConfigError, DataError, UnsafePickleError

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("DETOX_OFFLINE", "1")


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DETOX_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def gtsrb_train():
    return load_dataset("gtsrb", "train")


@pytest.fixture(scope="session")
def gtsrb_test():
    return load_dataset("gtsrb", "test")


def _extracted_left(cache: Path) -> list[str]:
    d = cache / "extracted"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


# -- CIFAR-10 ------------------------------------------------------------------------------
def test_cifar10_train_test(cifar_train, cifar_test):
    assert cifar_train.x.shape == (50000, 3, 32, 32)
    assert cifar_test.x.shape == (10000, 3, 32, 32)
    for ds, per_class in ((cifar_train, 5000), (cifar_test, 1000)):
        assert ds.x.dtype == torch.uint8 and ds.y.dtype == torch.int64
        assert ds.num_classes == 10
        assert ds.classes[0] == "airplane" and ds.classes[-1] == "truck"
        assert ds.class_counts().tolist() == [per_class] * 10
        assert ds.meta["dataset"] == "cifar10"
        assert ds.meta["checksum"] == "verified"
        assert "md5 of all 7" in ds.meta["checksum_detail"]
        assert Path(ds.meta["source"]).name.startswith("cifar-10")
    assert cifar_train.meta["split"] == "train" and cifar_test.meta["split"] == "test"
    # not a constant image: real pixels
    assert cifar_train.x[:100].float().std() > 30


def test_cifar10_reload_uses_decoded_cache_and_resizes(cifar_test):
    again = load_dataset("cifar10", "test")
    assert again.meta["decoded_cache"] is True
    assert torch.equal(again.x, cifar_test.x) and torch.equal(again.y, cifar_test.y)
    small = load_dataset("cifar10", "test", image_size=16)
    assert small.x.shape == (10000, 3, 16, 16) and small.x.dtype == torch.uint8
    assert small.meta["image_size"] == 16
    assert torch.equal(small.y, cifar_test.y)


def _cifar_folder(src_root: Path, dst: Path, modify: str | None = None) -> Path:
    """A cifar-10-batches-py folder of symlinks to the real members (one modified copy)."""
    out = dst / "cifar-10-batches-py"
    out.mkdir(parents=True)
    for name in MEMBER_MD5:
        if name == modify:
            data = bytearray((src_root / name).read_bytes())
            data[-1] ^= 0xFF
            (out / name).write_bytes(bytes(data))
        else:
            (out / name).symlink_to(src_root / name)
    return out


def test_cifar10_from_extracted_folder(cifar_test, tmp_path):
    root = Path(cifar_test.meta["root"])
    folder = _cifar_folder(root, tmp_path / "data")
    ds = load_dataset("cifar10", "test", data_dir=tmp_path / "data")
    assert ds.meta["source_kind"] == "folder" and ds.meta["source"] == str(folder)
    assert ds.meta["checksum"] == "verified"
    assert torch.equal(ds.y, cifar_test.y)


def test_cifar10_member_md5_mismatch_folder(cifar_test, tmp_path):
    root = Path(cifar_test.meta["root"])
    folder = _cifar_folder(root, tmp_path / "data", modify="batches.meta")
    with pytest.raises(ChecksumError) as e:
        load_dataset("cifar10", "test", data_dir=tmp_path / "data")
    msg = str(e.value)
    assert str(folder / "batches.meta") in msg
    assert MEMBER_MD5["batches.meta"] in msg  # expected
    assert "actual" in msg


def test_cifar10_member_md5_mismatch_archive(cifar_test, tmp_path, tmp_cache):
    """A tampered member inside an archive: ChecksumError, nothing left in the cache."""
    root = Path(cifar_test.meta["root"])
    data = tmp_path / "data"
    data.mkdir()
    with tarfile.open(data / "cifar-10-python.tar", "w") as tf:
        tf.add(root / "batches.meta", "cifar-10-batches-py/batches.meta")
        fake = b"not the real data_batch_1"
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(fake)
        tf.addfile(info, io.BytesIO(fake))
    with pytest.raises(ChecksumError, match=MEMBER_MD5["data_batch_1"]):
        load_dataset("cifar10", "train", data_dir=data)
    assert _extracted_left(tmp_cache) == []


def test_cifar10_truncated_archive(tmp_path, tmp_cache):
    src = Path(os.environ["DETOX_DATA_DIR"]) / "cifar-10-python.tar.xz"
    data = tmp_path / "data"
    data.mkdir()
    with open(src, "rb") as f:
        head = f.read(1 << 20)
    # a name without a known checksum: extraction itself must fail cleanly
    (data / "cifar-10-python.tar").write_bytes(head)
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset("cifar10", "train", data_dir=data)
    assert _extracted_left(tmp_cache) == []
    # the known name: the archive checksum catches it before extraction
    (data / "cifar-10-python.tar").unlink()
    (data / "cifar-10-python.tar.xz").write_bytes(head)
    with pytest.raises(ChecksumError) as e:
        load_dataset("cifar10", "train", data_dir=data)
    assert "cc0bdd021238369bbe0d6a70acc6cb9f2ad507e36ffb2cd3d40401cc9e4b21e9" in str(e.value)
    assert str(data / "cifar-10-python.tar.xz") in str(e.value)
    assert _extracted_left(tmp_cache) == []


# -- safe unpickling -----------------------------------------------------------------------
class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"data": _Evil(marker), "labels": [0]}, protocol=2)
    bad = tmp_path / "data_batch_1"
    bad.write_bytes(payload)
    with pytest.raises(UnsafePickleError) as e:
        safe_load(bad)
    assert "system" in str(e.value) and str(bad) in str(e.value)
    assert not marker.exists()
    # other code-running globals are refused too
    for obj in (eval, getattr, __import__):
        evil = pickle.dumps(type("R", (), {"__reduce__": lambda self, f=obj: (f, ("1",))})())
        with pytest.raises(UnsafePickleError, match=obj.__name__):
            safe_loads(evil)
    assert not marker.exists()


def test_safe_pickle_loads_numpy_batches():
    batch = {
        "batch_label": "b",
        "labels": [1, 2],
        "data": np.arange(12, dtype=np.uint8).reshape(2, 6),
        "filenames": ["a.png", "b.png"],
    }
    out = safe_loads(pickle.dumps(batch, protocol=2), encoding="latin1")
    assert np.array_equal(out["data"], batch["data"]) and out["labels"] == [1, 2]
    with pytest.raises(DataError, match="not a valid pickle"):
        safe_loads(b"\x80\x02garbage")


# -- generic archive machinery --------------------------------------------------------------
def _res(key="demo", validate=None):
    return Resource(
        dataset="demo",
        key=key,
        marker="hello.txt",
        folders=("demo", ""),
        archives={"demo.tar.gz": None, "demo.zip": None},
        url="https://example.invalid/demo.tar.gz",
        download_name="demo.tar.gz",
        validate=validate,
    )


def _demo_tar(path: Path, extra: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in {"demo/hello.txt": b"hi", **(extra or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_extraction_atomic_and_stale_tmp_ignored(tmp_path, tmp_cache, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    _demo_tar(data / "demo.tar.gz")
    sha = fetch.file_digest(data / "demo.tar.gz", memo=False)
    parent = tmp_cache / "extracted"
    parent.mkdir(parents=True)
    # what a SIGKILLed extraction leaves behind: a temp folder of a dead process
    stale = parent / f".demo-{sha[:12]}.tmp-999999999-abc"
    (stale / "demo").mkdir(parents=True)
    (stale / "demo" / "hello.txt").write_text("stale")
    os.utime(stale, (1e9, 1e9))  # an old one

    # an extraction interrupted mid-way (Ctrl-C) leaves nothing
    real_unpack = fetch.unpack

    def interrupted(src, dest):
        real_unpack(src, dest)
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch, "unpack", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch.fetch(_res(), data)
    assert _extracted_left(tmp_cache) == []  # the stale folder was cleaned up too
    monkeypatch.setattr(fetch, "unpack", real_unpack)

    loc = fetch.fetch(_res(), data)
    assert loc.root == parent / f"demo-{sha[:12]}" / "demo"
    assert (loc.root / "hello.txt").read_text() == "hi"
    assert loc.checksum == "unverified" and loc.kind == "archive"
    assert _extracted_left(tmp_cache) == [f"demo-{sha[:12]}"]


def test_extraction_validation_failure_leaves_nothing(tmp_path, tmp_cache):
    data = tmp_path / "data"
    data.mkdir()
    _demo_tar(data / "demo.tar.gz")

    def validate(root, memo):
        raise ChecksumError(f"{root}/hello.txt: md5 checksum mismatch")

    with pytest.raises(ChecksumError):
        fetch.fetch(_res(validate=validate), data)
    assert _extracted_left(tmp_cache) == []


def test_tar_path_traversal_refused(tmp_path, tmp_cache):
    data = tmp_path / "data"
    data.mkdir()
    _demo_tar(data / "demo.tar.gz", {"../../evil.txt": b"x", "/abs_evil.txt": b"x"})
    with pytest.raises(DataError, match="unsafe"):
        fetch.fetch(_res(), data)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_cache / "evil.txt").exists()
    assert _extracted_left(tmp_cache) == []


def test_zip_path_traversal_refused(tmp_path, tmp_cache):
    data = tmp_path / "data"
    data.mkdir()
    with zipfile.ZipFile(data / "demo.zip", "w") as zf:
        zf.writestr("demo/hello.txt", "hi")
        zf.writestr("../evil.txt", "x")
    with pytest.raises(DataError, match="refused"):
        fetch.fetch(_res(), data)
    assert _extracted_left(tmp_cache) == []


def test_known_checksum_mismatch_names_file_expected_actual(tmp_path):
    f = tmp_path / "file.bin"
    f.write_bytes(b"abc")
    with pytest.raises(ChecksumError) as e:
        fetch.verify_file(f, Checksum("md5", "0" * 32), memo=False)
    msg = str(e.value)
    assert str(f) in msg and "0" * 32 in msg and "900150983cd24fb0d6963f7d28e17f72" in msg


class _FakeResponse(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def test_download_path_without_network(tmp_path, tmp_cache, monkeypatch):
    """Download, verify and extract with a fake urlopen; a bad download is not kept."""
    payload = _demo_tar(tmp_path / "src.tar.gz").read_bytes()
    md5 = fetch.file_digest(tmp_path / "src.tar.gz", "md5", memo=False)
    monkeypatch.delenv("DETOX_OFFLINE")
    monkeypatch.setattr(
        fetch.urllib.request, "urlopen", lambda req, timeout: _FakeResponse(payload)
    )
    data = tmp_path / "data"
    res = _res()
    res.archives = {"demo.tar.gz": Checksum("md5", md5)}
    loc = fetch.fetch(res, data)
    assert loc.kind == "download" and loc.checksum == "verified"
    assert (data / "demo.tar.gz").is_file() and (loc.root / "hello.txt").is_file()

    res.archives = {"demo.tar.gz": Checksum("md5", "1" * 32)}
    with pytest.raises(ChecksumError, match="1" * 32):
        fetch.download(res.url, tmp_path / "dl" / "demo.tar.gz", res.download_checksum)
    assert not (tmp_path / "dl" / "demo.tar.gz").exists()
    assert [p.name for p in (tmp_path / "dl").iterdir()] == []


# -- missing data ----------------------------------------------------------------------------
def test_missing_data_error_offline(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingDataError) as e:
        load_dataset("cifar10", "train", data_dir=empty)
    msg = str(e.value)
    assert "cifar10" in msg and "DETOX_DATA_DIR" in msg and "--data-dir" in msg
    assert CIFAR_URL in msg
    searched = next(ln for ln in msg.splitlines() if ln.strip().startswith(f"{empty}/:"))
    assert "cifar-10-batches-py" in searched and "cifar-10-python.tar.gz" in searched
    assert "cifar-10-python.tar.xz" in searched
    assert not any(empty.iterdir())  # nothing created


def test_missing_data_download_fails_fast(tmp_path, monkeypatch):
    import urllib.error

    def no_network(req, timeout):
        assert timeout <= 30
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.delenv("DETOX_OFFLINE")
    monkeypatch.setenv("DETOX_DATA_DIR", str(tmp_path / "nothing"))
    monkeypatch.setattr(fetch.urllib.request, "urlopen", no_network)
    with pytest.raises(MissingDataError) as e:
        load_dataset("cifar10", "test")
    assert not (tmp_path / "nothing").exists()  # a failed download creates nothing
    msg = str(e.value)
    assert "Name or service not known" in msg and CIFAR_URL in msg and "DETOX_DATA_DIR" in msg
    for name, url in (
        ("gtsrb", "GTSRB_Final_Training_Images.zip"),
        ("tinyimagenet", "tiny-imagenet-200.zip"),
    ):
        with pytest.raises(MissingDataError, match=url):
            load_dataset(name, "train")


def test_bad_split_and_size(tmp_path):
    with pytest.raises(ConfigError):
        load_dataset("cifar10", "val")
    from detox.data.cifar10 import load_cifar10

    with pytest.raises(ConfigError):
        load_cifar10("validation")
    with pytest.raises(ConfigError):
        load_cifar10("test", image_size=0)


# -- GTSRB -----------------------------------------------------------------------------------
def test_gtsrb_npy_archive(gtsrb_train, gtsrb_test):
    assert gtsrb_train.x.shape == (39209, 3, 32, 32)
    assert gtsrb_test.x.shape == (12630, 3, 32, 32)
    for ds in (gtsrb_train, gtsrb_test):
        assert ds.num_classes == 43 and ds.x.dtype == torch.uint8
        assert ds.classes[14] == "Stop"
        assert ds.meta["checksum"] == "verified" and ds.meta["format"] == "npy-32x32"
        assert int(ds.class_counts().min()) > 0
    counts = gtsrb_train.class_counts()
    assert int(counts.min()) == 210 and int(counts.max()) == 2250


def _ppm(path: Path, w: int, h: int, value: int) -> None:
    rng = np.random.default_rng(value)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    arr[..., 0] = value
    Image.fromarray(arr).save(path, format="PPM")


def _fake_gtsrb(root: Path) -> tuple[list[int], list[int]]:
    header = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
    train_labels = []
    for c in (0, 14, 42):
        d = root / "GTSRB" / "Final_Training" / "Images" / f"{c:05d}"
        d.mkdir(parents=True)
        rows = []
        for i in range(2):
            name = f"00000_{i:05d}.ppm"
            _ppm(d / name, 30 + 5 * i, 40 - 3 * i, c)
            rows.append(f"{name};30;40;5;5;25;35;{c}\n")
            train_labels.append(c)
        (d / f"GT-{c:05d}.csv").write_text(header + "".join(rows))
    test = root / "GTSRB" / "Final_Test" / "Images"
    test.mkdir(parents=True)
    test_labels = [3, 42, 0]
    rows = []
    for i, c in enumerate(test_labels):
        name = f"{i:05d}.ppm"
        _ppm(test / name, 50, 45, c)
        rows.append(f"{name};50;45;5;5;40;40;{c}\n")
    (root / "GT-final_test.csv").write_text(header + "".join(rows))
    return train_labels, test_labels


def test_gtsrb_official_layout(tmp_path, tmp_cache):
    data = tmp_path / "data"
    train_labels, test_labels = _fake_gtsrb(data)
    tr = load_dataset("gtsrb", "train", data_dir=data, image_size=48)
    assert tr.x.shape == (6, 3, 48, 48) and tr.y.tolist() == train_labels
    assert tr.num_classes == 43 and tr.meta["format"] == "official"
    # red channel carries the class id: bilinear resizing keeps a constant channel
    assert tr.x[:, 0].flatten(1).float().mean(1).round().tolist() == [
        float(c) for c in train_labels
    ]
    te = load_dataset("gtsrb", "test", data_dir=data)
    assert te.x.shape == (3, 3, 32, 32) and te.y.tolist() == test_labels
    assert te.meta["labels_file"] == str(data / "GT-final_test.csv")
    again = load_dataset("gtsrb", "test", data_dir=data)
    assert again.meta["decoded_cache"] is True and torch.equal(again.x, te.x)
    # test labels missing -> clear error naming the csv and the official zip
    (data / "GT-final_test.csv").unlink()
    with pytest.raises(MissingDataError, match="GT-final_test.csv"):
        load_dataset("gtsrb", "test", data_dir=data)


def test_gtsrb_prefers_official_images_for_other_sizes(tmp_path, gtsrb_test):
    data = tmp_path / "data"
    _, test_labels = _fake_gtsrb(data)
    (data / "gtsrb_32x32.tar.xz").symlink_to(
        Path(os.environ["DETOX_DATA_DIR"]) / "gtsrb_32x32.tar.xz"
    )
    native = load_dataset("gtsrb", "test", data_dir=data)
    assert native.meta["format"] == "npy-32x32" and len(native) == 12630
    big = load_dataset("gtsrb", "test", data_dir=data, image_size=48)
    assert big.meta["format"] == "official" and big.y.tolist() == test_labels


# -- Tiny ImageNet ---------------------------------------------------------------------------
def _fake_tiny(root: Path) -> list[str]:
    base = root / "tiny-imagenet-200"
    wnids = ["n02", "n01", "n03"]
    (base / "train").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text(
        "n01\tgoldfish, Carassius auratus\nn02\tbullfrog\nn03\ttabby, tabby cat\nn99\tother\n"
    )
    rng = np.random.default_rng(0)
    for w in wnids:
        d = base / "train" / w / "images"
        d.mkdir(parents=True)
        for i in range(2):
            arr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            img = Image.fromarray(arr)
            if i == 1:
                img = img.convert("L")  # some Tiny ImageNet images are grayscale
            img.save(d / f"{w}_{i}.JPEG", format="JPEG")
    (base / "val" / "images").mkdir(parents=True)
    ann = []
    for i, w in enumerate(["n03", "n01", "n01", "n02"]):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            base / "val" / "images" / f"val_{i}.JPEG", format="JPEG"
        )
        ann.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63\n")
    (base / "val" / "val_annotations.txt").write_text("".join(ann))
    return sorted(wnids)


def test_tinyimagenet_fake_layout(tmp_path, tmp_cache):
    data = tmp_path / "data"
    wnids = _fake_tiny(data)
    tr = load_dataset("tinyimagenet", "train", data_dir=data)
    assert tr.x.shape == (6, 3, 64, 64) and tr.x.dtype == torch.uint8
    assert tr.classes == ["goldfish", "bullfrog", "tabby"]
    assert tr.meta["wnids"] == wnids
    assert tr.y.tolist() == [0, 0, 1, 1, 2, 2]
    te = load_dataset("tiny-imagenet", "test", data_dir=data)
    assert te.x.shape == (4, 3, 64, 64) and te.y.tolist() == [2, 0, 0, 1]
    small = load_dataset("tinyimagenet", "test", data_dir=data, image_size=32)
    assert small.x.shape == (4, 3, 32, 32)
    assert load_dataset("tinyimagenet", "test", data_dir=data).meta["decoded_cache"] is True
    (data / "tiny-imagenet-200" / "val" / "images" / "val_3.JPEG").unlink()
    with pytest.raises(DataError, match="val_3.JPEG"):
        load_dataset("tinyimagenet", "test", data_dir=data)
    # an archive under the official name must be the official archive
    zdir = tmp_path / "zipped"
    zdir.mkdir()
    with zipfile.ZipFile(zdir / "tiny-imagenet-200.zip", "w") as zf:
        zf.writestr("tiny-imagenet-200/wnids.txt", "n01\n")
    with pytest.raises(ChecksumError, match="90528d7ca1a48142e341f4ef8d21d0de"):
        load_dataset("tinyimagenet", "train", data_dir=zdir)


# -- image folders and .npz --------------------------------------------------------------------
def _write_img(path: Path, size: tuple[int, int], mode: str = "RGB", value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = np.full((size[1], size[0], channels), value, dtype=np.uint8).squeeze()
    img = Image.fromarray(arr)
    assert img.mode == mode
    img.save(path)


def test_image_folder(tmp_path):
    root = tmp_path / "imgs"
    _write_img(root / "dog" / "a.png", (20, 20), value=10)
    _write_img(root / "cat" / "b.jpg", (20, 20), "L", value=200)
    _write_img(root / "cat" / "c.bmp", (20, 20), "RGBA", value=50)
    (root / "cat" / "notes.txt").write_text("ignored")
    ds = load_dataset(str(root), "train")
    assert ds.classes == ["cat", "dog"] and ds.y.tolist() == [0, 0, 1]
    assert ds.x.shape == (3, 3, 20, 20) and ds.x.dtype == torch.uint8
    assert int(ds.x[2].float().mean()) == 10
    assert ds.meta["source_kind"] == "image-folder"
    # differing sizes: clear error, or resize everything
    _write_img(root / "dog" / "d.ppm", (30, 24))
    with pytest.raises(DataError, match="image_size"):
        load_dataset(str(root), "train")
    ds = load_dataset(str(root), "test", image_size=16)
    assert ds.x.shape == (4, 3, 16, 16)


def test_image_folder_with_splits_and_errors(tmp_path):
    root = tmp_path / "split"
    for split, n in (("train", 3), ("test", 1)):
        for c in ("a", "b", "c"):
            for i in range(n):
                _write_img(root / split / c / f"{i}.png", (8, 8))
    tr = load_dataset(str(root), "train")
    te = load_dataset(str(root), "test")
    assert len(tr) == 9 and len(te) == 3 and te.classes == tr.classes == ["a", "b", "c"]
    _write_img(root / "test" / "zebra" / "0.png", (8, 8))
    with pytest.raises(DataError, match="zebra"):
        load_dataset(str(root), "test")
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_dataset(str(empty), "train")
    with pytest.raises(DataError, match="no class folders"):
        load_dataset(str(tmp_path / "empty" / "cls"), "train")


def test_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 12, 12, 3), dtype=np.uint8)
    y = np.arange(10) % 4
    np.savez(tmp_path / "plain.npz", x=x, y=y)
    ds = load_dataset(str(tmp_path / "plain.npz"), "train")
    assert ds.x.shape == (10, 3, 12, 12) and ds.classes == ["0", "1", "2", "3"]
    assert torch.equal(ds.x, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert ds.meta["source_kind"] == "npz"

    np.savez(
        tmp_path / "split.npz",
        x_train=x,
        y_train=y,
        x_test=x[:4, :, :, :1],  # grayscale -> RGB
        y_test=y[:4],
        classes=np.array(["w", "x", "y", "z", "extra"]),
    )
    te = load_dataset(str(tmp_path / "split.npz"), "test", image_size=8)
    assert te.x.shape == (4, 3, 8, 8) and te.classes == ["w", "x", "y", "z", "extra"]
    assert torch.equal(te.x[:, 0], te.x[:, 2])


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"x": np.zeros((4, 8, 8, 3), np.float32), "y": np.zeros(4, np.int64)}, "uint8"),
        ({"x": np.zeros((4, 8, 8, 5), np.uint8), "y": np.zeros(4, np.int64)}, "shape"),
        ({"x": np.zeros((4, 8, 8, 3), np.uint8), "y": np.zeros(3, np.int64)}, "labels"),
        ({"x": np.zeros((4, 8, 8, 3), np.uint8), "y": np.zeros(4, np.float32)}, "integer"),
        ({"x": np.zeros((0, 8, 8, 3), np.uint8), "y": np.zeros(0, np.int64)}, "empty"),
        (
            {
                "x": np.zeros((2, 8, 8, 3), np.uint8),
                "y": np.array([0, 5]),
                "classes": np.array(["a", "b"]),
            },
            r"\[0, 2\)",
        ),
        ({"x": np.zeros((2, 8, 8, 3), np.uint8), "y": np.array([0, -1])}, ">= 0"),
        ({"images": np.zeros((2, 8, 8, 3), np.uint8)}, "expected arrays"),
        (
            {"x": np.zeros((2, 8, 8, 3), np.uint8), "y": np.array([0, 1]), "classes": "OBJ"},
            "pickled",
        ),
    ],
)
def test_npz_bad_input(tmp_path, arrays, match):
    if isinstance(arrays.get("classes"), str):
        arrays["classes"] = np.array([{"a": 1}, None], dtype=object)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match):
        load_dataset(str(tmp_path / "bad.npz"), "train")


def test_path_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(str(tmp_path / "missing.npz"), "train")
    (tmp_path / "junk.npz").write_bytes(b"this is not numpy")
    with pytest.raises(DataError):
        load_dataset(str(tmp_path / "junk.npz"), "train")


# -- resizing and dataset_info -----------------------------------------------------------------
def test_resize_images():
    x = torch.full((5, 3, 32, 32), 77, dtype=torch.uint8)
    out = resize_images(x, 20, batch_size=2)
    assert out.shape == (5, 3, 20, 20) and out.dtype == torch.uint8
    assert bool((out == 77).all())
    assert resize_images(x, 32) is x
    grad = torch.arange(32, dtype=torch.uint8).mul(8).expand(1, 3, 32, 32).contiguous()
    up = resize_images(grad, 64)
    assert int(up.min()) >= 0 and int(up.max()) <= 255 and up.shape == (1, 3, 64, 64)
    with pytest.raises(ConfigError):
        resize_images(x, -3)
    with pytest.raises(DataError, match="uint8"):
        resize_images(x.float(), 8)


def test_resize_images_float_fallback(monkeypatch):
    real = torch.nn.functional.interpolate

    def no_uint8(t, **kw):
        if t.dtype == torch.uint8:
            raise RuntimeError("no uint8 kernel")
        return real(t, **kw)

    x = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    fast = resize_images(x, 12, batch_size=3)
    monkeypatch.setattr(images.F, "interpolate", no_uint8)
    slow = resize_images(x, 12, batch_size=3)
    assert slow.dtype == torch.uint8 and slow.shape == (7, 3, 12, 12)
    assert int((fast.int() - slow.int()).abs().max()) <= 1


def test_dataset_info_real(cifar_train, gtsrb_train):
    info = dataset_info("cifar10")
    assert info["counts"] == {"train": 50000, "test": 10000}
    assert info["num_classes"] == 10 and info["classes"][3] == "cat"
    assert info["image_shape"] == [3, 32, 32]
    assert info["checksum"] == "verified"
    assert info["splits"]["train"]["class_counts"] == [5000] * 10
    assert "cifar-10" in info["source"]
    text = format_info(info)
    assert "50000" in text and "verified" in text

    g = dataset_info("gtsrb")
    assert g["counts"] == {"train": 39209, "test": 12630}
    assert g["num_classes"] == 43 and len(g["classes"]) == 43
    assert g["checksum"] == "verified" and g["image_shape"] == [3, 32, 32]


def test_dataset_info_folder(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 4, 4, 3), np.uint8), y=np.array([0, 1, 1]))
    info = dataset_info(str(tmp_path / "d.npz"))
    assert info["counts"] == {"train": 3, "test": 3} and info["checksum"] == "unverified"
    (tmp_path / "d.npz").unlink()
    with pytest.raises(DataError):
        dataset_info(str(tmp_path / "d.npz"))


# -- dataset facts ------------------------------------------------------------------------------
def _norm(model) -> tuple[list[float], list[float]]:
    return model.mean.flatten().tolist(), model.std.flatten().tolist()


def test_every_name_of_a_dataset_gets_its_normalisation():
    """A classifier built for any registered name, alias or split name (in any case) gets
    the normalisation of the dataset's facts; Tiny-ImageNet's is not the default."""
    from detox.data.registry import DATASETS, dataset_facts, registered_facts
    from detox.models import build_model
    from detox.models.base import DEFAULT_NORM

    facts = registered_facts()
    assert [f.name for f in facts] == DATASETS.names() == ["cifar10", "gtsrb", "tinyimagenet"]
    for f in facts:
        names = [
            *f.names,
            f.name.upper(),
            *(f"{n}-{s}" for n in f.names for s in ("train", "test")),
        ]
        for n in names:
            assert dataset_facts(n) is f, n
            m = build_model("small-cnn", f.num_classes, width=0.125, dataset=n)
            mean, std = _norm(m)
            assert mean == pytest.approx(f.mean, abs=1e-7) and std == pytest.approx(f.std, abs=1e-7)
            assert m.meta["mean"] == list(f.mean) and m.meta["std"] == list(f.std)
        assert f.mean != DEFAULT_NORM[0]
    tiny = build_model("small-cnn", 200, width=0.125, dataset="tinyimagenet-train")
    assert _norm(tiny)[0] == pytest.approx((0.4802, 0.4481, 0.3975), abs=1e-7)
    assert dataset_facts("tiny-imagenet") is dataset_facts("tinyimagenet-test")
    # no facts: image folders, .npz files, unknown names -> the default normalisation
    for n in (None, "", "my-images", "cifar10-small", "/data/cifar10", "cifar10-val", "d.npz"):
        assert dataset_facts(n) is None, n
        m = build_model("small-cnn", 10, width=0.125, dataset=n)
        assert _norm(m)[0] == pytest.approx(DEFAULT_NORM[0]), n


def test_loaders_write_names_that_resolve_to_their_facts(
    cifar_test, gtsrb_test, tmp_path, tmp_cache
):
    """The names loaders actually write (``meta["dataset"]``, ``<name>-<split>``, and the
    source of a PoisonedSet built from them) resolve to the loader's facts, which agree
    with the loaded arrays."""
    from detox.data import PoisonedSet
    from detox.data.registry import dataset_facts
    from detox.models import build_model

    data = tmp_path / "data"
    _fake_tiny(data)
    tiny = load_dataset("tiny-imagenet", "train", data_dir=data)
    assert (tiny.meta["dataset"], tiny.name) == ("tinyimagenet", "tinyimagenet-train")
    for ds, classes in ((cifar_test, 10), (gtsrb_test, 43), (tiny, 3)):
        f = dataset_facts(ds.meta["dataset"])
        assert f is not None and dataset_facts(ds.name) is f
        assert ds.image_shape == (f.channels, f.image_size, f.image_size)
        assert ds.num_classes == classes and (classes == 3 or f.num_classes == classes)
        pset = PoisonedSet.from_clean(ds.subset(range(3)))
        dataset = pset.source.get("dataset") or pset.source.get("name")  # as the pipeline does
        m = build_model("small-cnn", ds.num_classes, width=0.125, dataset=dataset)
        assert _norm(m)[0] == pytest.approx(f.mean, abs=1e-7)
    assert dataset_facts("tinyimagenet").mean == (0.4802, 0.4481, 0.3975)


def test_dataset_facts_match_the_training_data(cifar_train, gtsrb_train):
    """mean / std are the channel statistics of the real training split (measured: CIFAR-10
    exact to 4 decimals; GTSRB's published values within 0.004 of the shipped arrays)."""
    from detox.data.registry import dataset_facts

    for ds, tol in ((cifar_train, 1e-4), (gtsrb_train, 5e-3)):
        f = dataset_facts(ds.name)
        x = ds.x.double().div_(255.0)
        mean = x.mean(dim=(0, 2, 3)).tolist()
        std = x.std(dim=(0, 2, 3)).tolist()
        assert mean == pytest.approx(f.mean, abs=tol) and std == pytest.approx(f.std, abs=tol)


def test_packaged_diffusion_follows_the_facts():
    from detox.data.registry import DatasetFacts, dataset_facts, register_dataset
    from detox.diffusion import packaged_diffusion
    from detox.diffusion.backend import packaged_datasets

    assert packaged_datasets() == ["cifar10", "gtsrb"]
    for name in ("cifar10", "gtsrb"):
        path = Path(packaged_diffusion(name))
        assert path.name == dataset_facts(name).diffusion and (path / "model_index.json").is_file()
    assert packaged_diffusion("CIFAR-10") == packaged_diffusion("cifar10-test")
    assert packaged_diffusion("tiny-imagenet") is None and packaged_diffusion("x.npz") is None
    # a record must be consistent, and a name can be registered once
    with pytest.raises(ConfigError, match="one value per channel"):
        DatasetFacts("x", 10, 32, mean=(0.5,), std=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="lower-case"):
        DatasetFacts("X", 10, 32, mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(ConfigError, match="registered twice"):
        register_dataset(DatasetFacts("cifar10", 10, 32, (0.5,) * 3, (0.5,) * 3))(lambda: None)
