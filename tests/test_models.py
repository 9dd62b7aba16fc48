import pytest
import torch

from detox.errors import ConfigError, DataError
from detox.models import MODELS, build_model, load_checkpoint, save_checkpoint

NAMES = ["resnet18", "resnet34", "resnet50", "preact-resnet18", "vgg16-bn", "small-cnn"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size,classes", [(32, 10), (64, 43)])
def test_models_any_size_and_classes(name, size, classes):
    m = build_model(name, classes, width=0.125).eval()
    with torch.no_grad():
        out = m(torch.rand(2, 3, size, size))
    assert out.shape == (2, classes)
    assert m.features(torch.rand(1, 3, size, size)).ndim == 2


def test_width_multiplier_scales_parameters():
    n = [
        sum(p.numel() for p in build_model("resnet18", 10, width=w).parameters())
        for w in (0.25, 0.5)
    ]
    assert 3.5 < n[1] / n[0] < 4.1  # conv parameters grow with width^2


def test_registry_lists_all_models():
    assert set(NAMES) <= set(MODELS.names())
    with pytest.raises(ConfigError, match="valid models: .*resnet18"):
        build_model("resnet999", 10)


def test_bad_model_arguments():
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("resnet18", 1)
    with pytest.raises(ConfigError, match="width"):
        build_model("resnet18", 10, width=0)


def test_checkpoint_round_trip(tmp_path):
    m = build_model("preact-resnet18", 10, width=0.125, dataset="cifar10").eval()
    x = torch.rand(3, 3, 32, 32)
    save_checkpoint(m, tmp_path, extra={"note": "x"})
    assert (tmp_path / "model.safetensors").is_file()
    m2 = load_checkpoint(tmp_path)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    assert torch.allclose(m2.mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))


def test_checkpoint_missing(tmp_path):
    with pytest.raises(DataError, match="not a detox checkpoint"):
        load_checkpoint(tmp_path)
