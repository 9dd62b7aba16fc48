"""Diffusion backend: build, save/load in the diffusers format (both layouts), training
with the smoke preset on real CIFAR-10 images, resume, offline hub errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from detox.defenses.purifiers import build_purifier, purify_all
from detox.diffusion import (
    build_unet,
    load_diffusion,
    make_scheduler,
    make_train_config,
    new_diffusion_model,
    save_diffusion,
    train_diffusion,
)
from detox.diffusion.train import lr_factor
from detox.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def _same_weights(a, b) -> bool:
    sa, sb = a.unet.state_dict(), b.unet.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].device)) for k in sa)


def test_schedules_and_presets():
    lin = make_scheduler("linear")
    assert lin.config.num_train_timesteps == 1000
    assert abs(float(lin.betas[0]) - 1e-4) < 1e-9 and abs(float(lin.betas[-1]) - 0.02) < 1e-7
    cos = make_scheduler("cosine", kind="ddim")
    assert cos.config.beta_schedule == "squaredcos_cap_v2"
    with pytest.raises(ConfigError, match="beta schedule"):
        make_scheduler("quadratic")
    paper = make_train_config("paper")
    assert paper.block_out_channels == (128, 256, 256, 256) and paper.dropout == 0.1
    assert make_train_config("cpu") == make_train_config("quick")
    assert make_train_config("quick").t_max == 120
    with pytest.raises(ConfigError, match="preset"):
        make_train_config("huge")
    # the paper network: DDPM CIFAR-10 family, attention at 16x16 only
    unet = build_unet(32, 3, paper.block_out_channels, 2, (16,), True, 0.1)
    assert unet.config.down_block_types[1] == "AttnDownBlock2D"
    assert sum("Attn" in t for t in unet.config.down_block_types) == 1
    assert 35e6 < sum(p.numel() for p in unet.parameters()) < 36.5e6
    with pytest.raises(ConfigError, match="norm_num_groups"):
        build_unet(32, 3, (16, 32), 1, (), False, 0.0, 32)


def test_lr_schedule():
    f = [lr_factor(s, 100, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] < 0.01


def test_save_load_both_layouts(tmp_path):
    m = new_diffusion_model(
        sample_size=8,
        block_out_channels=(16, 32),
        norm_num_groups=8,
        beta_schedule="cosine",
        t_max=120,
    )
    out = save_diffusion(m, tmp_path / "pipe")
    for f in (
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
        "model_index.json",
        "detox_diffusion.json",
    ):
        assert (out / f).is_file(), f
    back = load_diffusion(out)
    assert _same_weights(m, back)
    assert back.beta_schedule == "squaredcos_cap_v2" and back.t_max == 120
    assert torch.allclose(back.alphas_cumprod, m.alphas_cumprod)
    # the layout of google/ddpm-cifar10-32: UNet config + weights and scheduler in the root
    root = tmp_path / "root"
    root.mkdir()
    for f in ("config.json", "diffusion_pytorch_model.safetensors"):
        shutil.copy(out / "unet" / f, root / f)
    shutil.copy(out / "scheduler" / "scheduler_config.json", root / "scheduler_config.json")
    back2 = load_diffusion(str(root))
    assert _same_weights(m, back2) and back2.beta_schedule == "squaredcos_cap_v2"
    assert back2.t_max == 1000  # no detox metadata: all timesteps assumed trained
    # diffusers itself reads what we write
    from diffusers import DDPMPipeline

    pipe = DDPMPipeline.from_pretrained(out)
    assert type(pipe.scheduler).__name__ == "DDPMScheduler"
    # a folder that is not a model
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no UNet2DModel config"):
        load_diffusion(tmp_path / "empty")
    with pytest.raises(ConfigError, match="no such folder"):
        load_diffusion(tmp_path / "missing")


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")
def test_offline_hub_id_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as e:
        load_diffusion("detox-test-nonexistent/ddpm-nothing-32", local_files_only=True)
    msg = str(e.value)
    assert "detox-test-nonexistent/ddpm-nothing-32" in msg and "local folder" in msg


def test_smoke_training_saves_loads_and_purifies(cifar_small, tmp_path):
    data = cifar_small.subset(torch.arange(64), name="cifar64")
    cfg = make_train_config("smoke", steps=4, progress=False)
    res = train_diffusion(data, cfg, device="cpu", out_dir=tmp_path / "ddpm")
    assert res.steps == 4 and res.final_loss == res.final_loss  # not NaN
    assert [r["step"] for r in res.loss_log] == [2, 4]
    meta = json.loads((tmp_path / "ddpm" / "detox_diffusion.json").read_text())
    assert meta["t_max"] == 120 and meta["steps"] == 4 and meta["final_loss"] == res.final_loss
    assert (tmp_path / "ddpm" / "unet" / "diffusion_pytorch_model.safetensors").is_file()

    model = load_diffusion(tmp_path / "ddpm")
    assert _same_weights(res.model, model)  # the EMA weights are what was saved
    assert model.t_max == 120 and model.sample_size == 32

    # resume: raising steps continues from the checkpoint
    more = train_diffusion(
        data, make_train_config("smoke", steps=6, progress=False), "cpu", tmp_path / "ddpm"
    )
    assert more.steps == 6 and [r["step"] for r in more.loss_log] == [2, 4, 6]

    p = build_purifier("sampdetox", "smoke", diffusion=str(tmp_path / "ddpm"))
    assert not p.warnings  # smoke training uses the paper preset's cosine schedule
    x = data.x[:3]
    y = purify_all(p, x, batch_size=2, device="cpu", progress=False)
    assert y.shape == x.shape and y.dtype == torch.uint8
    xf = p.purify(x.float() / 255)
    assert xf.shape == x.shape and float(xf.min()) >= 0.0 and float(xf.max()) <= 1.0


@pytest.mark.parametrize("dataset", ["cifar10", "gtsrb"])
def test_shipped_models_denoise_real_test_images(dataset):
    """The diffusion models shipped in the package load without a download, carry their
    training record, and denoise real test images: at noise level 60 (of the levels they
    were trained on, here 150) the one-step estimate of the clean image is much closer to it than
    the noisy input is. SampDetox picks the shipped model up by the dataset's name."""
    from pathlib import Path

    from detox.data import load_dataset
    from detox.diffusion import packaged_diffusion

    path = packaged_diffusion(dataset)
    assert path is not None, f"no diffusion model shipped for {dataset}"
    model = load_diffusion(path)
    meta = json.loads((Path(path) / "detox_diffusion.json").read_text())
    assert meta["trained"] and meta["steps"] >= 1000 and model.t_max == 150
    assert model.continuous_time and meta["train"]["device"] == "NVIDIA H200"
    test = load_dataset(dataset, "test")
    x0 = test.x[:64].float() / 127.5 - 1.0
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=g)
    t = 60
    ab = float(model.alphas_cumprod[t])
    xt = ab**0.5 * x0 + (1 - ab) ** 0.5 * noise
    with torch.no_grad():
        eps = model.unet(xt, torch.full((len(x0),), t)).sample
    x0_hat = (xt - (1 - ab) ** 0.5 * eps) / ab**0.5
    err_noisy = float((xt / ab**0.5 - x0).pow(2).mean())
    err_model = float((x0_hat - x0).pow(2).mean())
    assert err_model < 0.5 * err_noisy, (err_model, err_noisy)

    p = build_purifier("sampdetox", "smoke").use_dataset_defaults(dataset)
    assert p.config.diffusion == path
    y = purify_all(p, test.x[:4], device="cpu", progress=False, seed=0)
    assert torch.equal(y, purify_all(p, test.x[:4], device="cpu", progress=False, seed=0))


def test_fractional_levels_interpolate_log_abar():
    """abar at fractional levels: exact at integer levels, log-linear in between (oracle:
    numpy's interp on log abar), and levels_for_abar inverts it."""
    import numpy as np

    from detox.diffusion.backend import abar_at, levels_for_abar

    m = new_diffusion_model(block_out_channels=(16, 32), norm_num_groups=8, beta_schedule="linear")
    lv = torch.tensor([0.0, 1.0, 2.5, 37.25, 119.9, 1000.0], dtype=torch.float64)
    got = abar_at(m.abar_levels, lv)
    logs = np.log(m.abar_levels.numpy())
    want = np.exp(np.interp(lv.numpy(), np.arange(len(logs)), logs))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    assert float(got[1]) == float(m.abar_levels[1])
    torch.testing.assert_close(levels_for_abar(m.abar_levels, got), lv, atol=1e-9, rtol=0)
    torch.testing.assert_close(m.timesteps_for(m.abar_levels[:4]), torch.arange(4.0).double() - 1)


def test_continuous_training_records_and_checks_its_mode(tmp_path):
    """continuous_time training samples fractional levels, saves the flag with the model,
    and a checkpoint of the other mode is refused on resume."""
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    cfg = make_train_config("smoke", steps=3, continuous_time=True, progress=False)
    res = train_diffusion(x, cfg, device="cpu", out_dir=tmp_path / "m")
    assert res.model.continuous_time and load_diffusion(tmp_path / "m").continuous_time
    assert res.steps == 3 and len(res.loss_log) >= 1
    other = make_train_config("smoke", steps=4, continuous_time=False, progress=False)
    with pytest.raises(ConfigError, match="continuous_time"):
        train_diffusion(x, other, device="cpu", out_dir=tmp_path / "m")


def test_training_can_start_from_a_model(tmp_path):
    """init_from: a run starts from another model's weights (the EMA too); zero steps
    return them unchanged, and a network of another shape is refused by name."""
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    first = train_diffusion(x, make_train_config("smoke", progress=False), "cpu", tmp_path / "a")
    cfg = make_train_config("smoke", steps=0, init_from=str(tmp_path / "a"), progress=False)
    res = train_diffusion(x, cfg, device="cpu")
    for k, v in first.model.unet.state_dict().items():
        assert torch.equal(v, res.model.unet.state_dict()[k]), k
    bad = make_train_config("smoke", init_from=str(tmp_path / "a"), block_out_channels=(8, 16))
    with pytest.raises(ConfigError, match="init_from .* does not match"):
        train_diffusion(x, bad, device="cpu")
