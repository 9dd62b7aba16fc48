"""Training, saving and loading detox's small MAE (:mod:`detox.mae.model`).

Training is MAE's recipe at small scale: a random 75% of the tokens hidden per image,
mean squared error of the hidden patches' pixels, AdamW (betas 0.9 / 0.95, weight decay
0.05 on weights, none on biases, norms, the mask token), a linear warm-up then cosine decay
to 0 at the last step, random horizontal flips (off for traffic signs). Everything random
comes from ``seed``: the network's initialisation, the data subset, and each step's batch,
flips and masks from a generator seeded with ``(seed, step)`` (so a run resumed from its
checkpoint draws what the uninterrupted run would have).

``minutes > 0`` sizes the run to a wall-clock budget: the first ``calib_steps`` steps
(inside the warm-up, whose length does not depend on the total) are timed and the total
number of steps, hence the cosine schedule, is fixed from their speed.

**Folder format** (what :func:`save_mae` writes and :func:`load_mae` reads, safetensors
only): ``model.safetensors`` (the weights in fp16) and ``config.json`` (``model``: the
:class:`~detox.mae.model.MAEConfig`; ``train``: every training setting, the data subset
and its checksum, the loss log, the device and threads, the wall time, the final loss).
While training, ``checkpoint/`` in the output folder holds the latest resumable state
(fp32 weights and optimiser moments, safetensors + JSON); it is removed when the model is
written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import typing
from pathlib import Path
from typing import Any

import torch

from detox.config import hp, make_config
from detox.errors import ConfigError
from detox.mae.model import MAE, MAEConfig
from detox.utils.seed import derive_seed

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "detox-mae-v1"


@dataclasses.dataclass
class MAETrainConfig:
    """Settings of one MAE training run."""

    dataset: str = hp("cifar10", "dataset name", "[open]", "training split of this dataset")
    subset: int = hp(
        0, "images", "[open]", "seeded subset of the training split (0 = all)", range="[0, inf)"
    )
    steps: int = hp(2000, "steps", "[open]", "total steps (unless minutes > 0)", range="[1, inf)")
    minutes: float = hp(
        0.0,
        "minutes",
        "[open]",
        "wall-clock budget: > 0 sets steps from the speed of the first calib_steps",
        range="[0, inf)",
    )
    calib_steps: int = hp(
        30, "steps", "[open]", "steps timed to size a minutes budget", range="[2, inf)"
    )
    batch_size: int = hp(64, "images per step", "[open]", range="[1, inf)")
    lr: float = hp(1e-3, "learning rate", "[open] (short run)", "peak AdamW lr", range="(0, inf)")
    weight_decay: float = hp(0.05, "", "[MAE]", "AdamW weight decay", range="[0, inf)")
    beta2: float = hp(0.95, "", "[MAE]", "AdamW beta2 (beta1 = 0.9)", range="(0, 1)")
    clip_grad: float = hp(
        1.0, "gradient norm", "[open]", "clip the global gradient norm (0 = off)", range="[0, inf)"
    )
    warmup_steps: int = hp(100, "steps", "[open]", "linear warm-up", range="[0, inf)")
    mask_ratio: float = hp(0.75, "fraction of tokens", "[MAE]", "hidden per image", range="(0, 1)")
    flip: bool = hp(True, "", "[open]", "random horizontal flips (off for GTSRB)")
    seed: int = hp(0, "seed", "", "initialisation, subset, batches, masks")
    log_every: int = hp(25, "steps", "", "loss log granularity", range="[1, inf)")
    checkpoint_every: int = hp(200, "steps", "", "resumable checkpoint", range="[1, inf)")
    progress: bool = hp(True, "", "", "tqdm progress bar")

    PRESETS: typing.ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {},
        "quick": {"steps": 300},
        "smoke": {"steps": 10, "batch_size": 16, "warmup_steps": 2, "log_every": 1},
    }

    def validate(self) -> None:
        if self.minutes > 0 and self.calib_steps > self.warmup_steps:
            raise ConfigError(
                f"calib_steps={self.calib_steps}: must not exceed warmup_steps="
                f"{self.warmup_steps} when minutes > 0 (the total is not known before)"
            )


def lr_at(step: int, total: int, cfg: MAETrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to 0 at step ``total``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, total - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))


def _subset(n: int, cfg: MAETrainConfig) -> torch.Tensor:
    if cfg.subset <= 0 or cfg.subset >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "mae-subset"))
    return torch.randperm(n, generator=g)[: cfg.subset].sort().values


def _batch(
    model: MAE, x: torch.Tensor, step: int, cfg: MAETrainConfig, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``step``'s images (float [0, 1] on ``device``) and masks, from ``(seed, step)``."""
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "mae-batch", step))
    idx = torch.randint(len(x), (cfg.batch_size,), generator=g)
    flip = torch.rand(cfg.batch_size, generator=g) < 0.5
    mask = model.random_mask(cfg.batch_size, cfg.mask_ratio, g)
    xb = x[idx].to(device, torch.float32) / 255.0
    if cfg.flip:
        xb = torch.where(flip.to(device)[:, None, None, None], xb.flip(-1), xb)
    return xb, mask.to(device)


def _optimizer(model: MAE, cfg: MAETrainConfig) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and n != "mask_token"]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2 or n == "mask_token"]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2))


# -- checkpoints ---------------------------------------------------------------------------
def _save_checkpoint(folder: Path, model: MAE, opt: torch.optim.Optimizer, meta: dict) -> None:
    from safetensors.torch import save_file

    from detox.utils.io import atomic_write_json

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v).detach().contiguous()
    tmp = folder / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, folder / "state.safetensors")
    atomic_write_json(folder / "state.json", meta)


def _load_checkpoint(folder: Path, model: MAE, opt: torch.optim.Optimizer) -> dict | None:
    from safetensors.torch import load_file

    if not (folder / "state.json").is_file() or not (folder / "state.safetensors").is_file():
        return None
    meta = json.loads((folder / "state.json").read_text())
    tensors = load_file(str(folder / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
    return meta


# -- training ------------------------------------------------------------------------------
def train_mae(
    cfg: MAETrainConfig | None = None,
    model_config: MAEConfig | None = None,
    out: str | os.PathLike | None = None,
    data: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
) -> tuple[MAE, dict[str, Any]]:
    """Train an MAE; returns ``(model, record)``. With ``out``, checkpoints there every
    ``checkpoint_every`` steps (resuming from a checkpoint it finds, made with the same
    settings) and finally writes the model folder (:func:`save_mae`).

    ``data``: uint8 images (N, C, H, W) to train on instead of ``cfg.dataset``'s training
    split (the subset setting still applies); the model's normalisation defaults to the
    dataset's channel statistics when ``model_config`` is not given.
    """
    from tqdm.auto import tqdm

    from detox.data.registry import dataset_facts
    from detox.utils.device import resolve_device

    cfg = cfg if cfg is not None else make_config(MAETrainConfig)
    device = resolve_device(device)
    source = "given tensor"
    if data is None:
        from detox.data import load_dataset

        data = load_dataset(cfg.dataset, "train").x
        source = f"{cfg.dataset} train split"
    if data.dtype != torch.uint8 or data.ndim != 4:
        raise ConfigError("train_mae: expected uint8 images (N, C, H, W)")
    if model_config is None:
        facts = dataset_facts(cfg.dataset)
        over: dict[str, Any] = {"image_size": data.shape[-1], "channels": data.shape[1]}
        if facts is not None and facts.channels == data.shape[1]:
            over.update(mean=tuple(facts.mean), std=tuple(facts.std))
        model_config = make_config(MAEConfig, **over)
    idx = _subset(len(data), cfg)
    x = data[idx].contiguous()
    subset = {
        "source": source,
        "images": len(idx),
        "of": len(data),
        "indices_sha256": hashlib.sha256(idx.numpy().astype("<i8").tobytes()).hexdigest(),
        "images_sha256": hashlib.sha256(x.numpy().tobytes()).hexdigest(),
    }
    model = MAE(model_config, seed=derive_seed(cfg.seed, "mae-init")).to(device)
    opt = _optimizer(model, cfg)
    settings = dataclasses.asdict(cfg)
    ckpt = Path(out) / "checkpoint" if out is not None else None
    total = cfg.steps if cfg.minutes <= 0 else None
    losses: list[dict[str, float]] = []
    start, elapsed_before, calib = 0, 0.0, None
    if ckpt is not None:
        meta = _load_checkpoint(ckpt, model, opt)
        if meta is not None:
            if meta["settings"] != json.loads(json.dumps(settings)) or meta["model"] != json.loads(
                json.dumps(dataclasses.asdict(model_config))
            ):
                raise ConfigError(
                    f"{ckpt}: a checkpoint of a run with other settings; remove it or "
                    "use another output folder"
                )
            start, total, losses = meta["step"], meta["total"], meta["losses"]
            elapsed_before, calib = meta["elapsed_s"], meta.get("calibration")
    model.train()
    t0 = time.perf_counter()
    run, n_run = 0.0, 0
    bar = tqdm(
        total=total, initial=start, desc="train mae", disable=not cfg.progress, dynamic_ncols=True
    )
    step = start
    while total is None or step < total:
        xb, mask = _batch(model, x, step, cfg, device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total or 10**12, cfg)
        loss = model.loss(xb, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        opt.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ConfigError(f"train_mae: the loss became {value} at step {step}; lower lr")
        run, n_run, step = run + value, n_run + 1, step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}")
        if total is None and step - start == cfg.calib_steps:
            per_step = (time.perf_counter() - t0) / cfg.calib_steps
            total = max(step + 1, int(cfg.minutes * 60.0 / per_step))
            calib = {"steps": cfg.calib_steps, "seconds_per_step": per_step, "total": total}
            bar.total = total
            bar.refresh()
        if n_run and (step % cfg.log_every == 0 or step == total):
            losses.append({"step": step, "loss": run / n_run, "lr": lr_at(step - 1, total, cfg)})
            run, n_run = 0.0, 0
        if ckpt is not None and total is not None and step % cfg.checkpoint_every == 0:
            _save_checkpoint(
                ckpt,
                model,
                opt,
                {
                    "step": step,
                    "total": total,
                    "losses": losses,
                    "elapsed_s": elapsed_before + time.perf_counter() - t0,
                    "calibration": calib,
                    "settings": settings,
                    "model": dataclasses.asdict(model_config),
                },
            )
    bar.close()
    model.eval()
    wall = elapsed_before + time.perf_counter() - t0
    record = {
        "settings": settings,
        "steps": total,
        "data": subset,
        "losses": losses,
        "final_loss": losses[-1]["loss"] if losses else None,
        "calibration": calib,
        "resumed_at_step": start or None,
        "wall_time_s": wall,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "parameters": model.num_parameters(),
    }
    if out is not None:
        save_mae(model, out, record)
        if ckpt is not None and ckpt.is_dir():
            shutil.rmtree(ckpt)
    return model, record


# -- folder format ---------------------------------------------------------------------------
def save_mae(model: MAE, out: str | os.PathLike, train_record: dict | None = None) -> Path:
    """Write ``model.safetensors`` (fp16) and ``config.json`` into folder ``out``."""
    from safetensors.torch import save as st_save

    from detox.utils.io import atomic_write_bytes, atomic_write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()
    }
    atomic_write_bytes(out / WEIGHTS, st_save(state, metadata={"format": FORMAT}))
    atomic_write_json(
        out / CONFIG,
        {
            "format": FORMAT,
            "model": dataclasses.asdict(model.config),
            "parameters": model.num_parameters(),
            "train": train_record or {},
        },
    )
    return out


def load_mae(path: str | os.PathLike, device: str | torch.device = "cpu") -> MAE:
    """The MAE saved in folder ``path`` (float32, eval mode, on ``device``)."""
    from safetensors.torch import load_file

    from detox.utils.device import resolve_device

    root = Path(path)
    if not (root / WEIGHTS).is_file() or not (root / CONFIG).is_file():
        raise ConfigError(
            f"MAE {str(path)!r}: expected a folder with {WEIGHTS} and {CONFIG} (written by "
            "detox.mae.train_mae / benchmarks/train_mae.py)"
        )
    meta = json.loads((root / CONFIG).read_text())
    if meta.get("format") != FORMAT:
        raise ConfigError(f"MAE {str(path)!r}: unknown format {meta.get('format')!r}")
    cfg = make_config(MAEConfig, **meta["model"])
    model = MAE(cfg)
    state = {k: v.float() for k, v in load_file(str(root / WEIGHTS)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"MAE {str(path)!r}: weights do not match the config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    model.source = str(root)  # type: ignore[attr-defined]
    return model.to(resolve_device(device)).eval()


def packaged_mae(dataset: str | None = "cifar10") -> str | None:
    """The folder of the MAE shipped with detox for ``dataset`` (any name or alias
    :func:`detox.data.registry.dataset_facts` resolves): ``detox/weights/mae-<name>-<size>``
    (trained by ``benchmarks/train_mae.py``, see ``detox/weights/mae-README.md``), or None
    when there is none."""
    from importlib import resources

    from detox.data.registry import dataset_facts

    facts = dataset_facts(dataset)
    if facts is None:
        return None
    root = resources.files("detox").joinpath("weights", f"mae-{facts.name}-{facts.image_size}")
    return str(root) if root.is_dir() and root.joinpath(WEIGHTS).is_file() else None
