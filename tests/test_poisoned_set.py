import json

import numpy as np
import pytest
import torch

from detox.data import ImageDataset, PoisonedSet
from detox.errors import DataError


def test_no_attack_round_trip(tmp_path, cifar_small, cifar_test_small):
    ps = PoisonedSet.from_clean(cifar_small, seed=7, test=cifar_test_small)
    assert len(ps) == 600 and not ps.is_poisoned.any()
    assert torch.equal(ps.y, ps.y_true)
    ps.save(tmp_path / "art")
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["format"] == "detox.poisoned-set" and manifest["seed"] == 7
    assert manifest["summary"]["n_poisoned"] == 0
    # other tools read the arrays with plain NumPy
    x = np.load(tmp_path / "art" / "x.npy", allow_pickle=False)
    assert x.shape == (600, 3, 32, 32) and x.dtype == np.uint8
    back = PoisonedSet.load(tmp_path / "art")
    assert torch.equal(back.x, ps.x) and torch.equal(back.attack_id, ps.attack_id)
    assert back.classes == ps.classes and back.test is not None
    assert torch.equal(back.test.x, cifar_test_small.x)


def test_tampered_array_is_refused(tmp_path, cifar_small):
    ps = PoisonedSet.from_clean(cifar_small.subset(range(20)))
    ps.save(tmp_path)
    y = np.load(tmp_path / "y.npy")
    y[0] = (y[0] + 1) % 10
    np.save(tmp_path / "y.npy", y)
    with pytest.raises(DataError, match="sha256 mismatch"):
        PoisonedSet.load(tmp_path)


def test_bad_containers():
    x = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(DataError, match="uint8"):
        ImageDataset(x.float(), torch.zeros(4), ["a", "b"])
    with pytest.raises(DataError, match=r"labels must lie in \[0, 2\)"):
        ImageDataset(x, torch.tensor([0, 1, 2, 0]), ["a", "b"])
    with pytest.raises(DataError, match="empty"):
        ImageDataset(x[:0], torch.zeros(0, dtype=torch.long), ["a", "b"])
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        ImageDataset(torch.zeros(4, 8, 8, dtype=torch.uint8), torch.zeros(4), ["a", "b"])
    with pytest.raises(DataError, match="attack_id"):
        PoisonedSet(
            x,
            torch.zeros(4, dtype=torch.long),
            torch.zeros(4, dtype=torch.long),
            torch.tensor([0, -1, -1, -1]),
            ["a", "b"],
        )
    with pytest.raises(DataError, match="not a PoisonedSet"):
        PoisonedSet.load("/nonexistent-dir")


@pytest.mark.parametrize("where", ["relative", "absolute", "symlink", "nested"])
def test_manifest_cannot_point_outside_the_artefact(tmp_path, cifar_small, where):
    """A shared artefact whose manifest names a file outside its folder is refused before
    the file is read or hashed, even when that file's checksum matches."""
    art = tmp_path / "art"
    PoisonedSet.from_clean(cifar_small.subset(range(20))).save(art)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "y.npy").write_bytes((art / "y.npy").read_bytes())  # same bytes, same sha256
    mf = json.loads((art / "manifest.json").read_text())
    if where == "relative":
        mf["arrays"]["y"]["file"] = "../elsewhere/y.npy"
    elif where == "absolute":
        mf["arrays"]["y"]["file"] = str(outside / "y.npy")
    elif where == "nested":
        (art / "sub").mkdir()
        (art / "sub" / "y.npy").write_bytes((art / "y.npy").read_bytes())
        mf["arrays"]["y"]["file"] = "sub/y.npy"
    else:
        (art / "y.npy").unlink()
        (art / "y.npy").symlink_to(outside / "y.npy")
    (art / "manifest.json").write_text(json.dumps(mf))
    with pytest.raises(DataError, match="outside the artefact|plain file name"):
        PoisonedSet.load(art)
