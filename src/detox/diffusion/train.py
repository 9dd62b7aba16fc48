"""Training a DDPM (epsilon prediction) on an :class:`~detox.data.base.ImageDataset`.

Per step: a batch of images mapped to [-1, 1] and randomly flipped, timesteps uniform in
``[0, t_max)``, ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, loss = MSE between the
UNet's output and ``eps``. AdamW, linear warm-up then cosine decay to 0, gradient
clipping, an exponential moving average (EMA) of the weights; the EMA weights are what is
saved and returned. Batches, timesteps and noise come from one seeded CPU generator, so a
run is reproducible and the same on any device (up to floating-point differences).

Output folder (``out_dir``), refreshed at every checkpoint, each file written atomically:

* the EMA model in the diffusers layout (``unet/``, ``scheduler/``, ``model_index.json``)
  and ``detox_diffusion.json`` (``t_max``, settings, steps done, loss log, final loss);
* ``train_state.pt``: raw weights, EMA, optimiser, schedule and generator state, used to
  resume an interrupted run (``resume=True``; ``steps`` may be raised to continue).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from detox.data.base import ImageDataset
from detox.diffusion.backend import DiffusionModel, abar_at, build_unet, make_scheduler
from detox.diffusion.presets import DiffusionTrainConfig
from detox.errors import ConfigError, DivergedError
from detox.utils.device import resolve_device
from detox.utils.io import atomic_write_bytes

STATE_FILE = "train_state.pt"


@dataclasses.dataclass
class DiffusionTrainResult:
    model: DiffusionModel  # EMA weights, eval mode
    steps: int  # optimiser steps done in total (including resumed ones)
    final_loss: float  # mean loss over the last log window
    loss_log: list[dict[str, float]]  # {"step", "loss", "lr", "seconds"} per log window
    seconds: float  # wall time of this call
    images_per_second: float  # training throughput of this call
    out_dir: Path | None = None
    stopped_early: bool = False  # max_minutes reached before cfg.steps


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    u = min(1.0, (step - warmup) / span)
    return 0.5 * (1.0 + math.cos(math.pi * u))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_p = [p for p in ema.parameters()]
    src_p = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_p, src_p, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def _save_state(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def train_diffusion(
    dataset: ImageDataset | torch.Tensor,
    cfg: DiffusionTrainConfig,
    device: str | torch.device = "auto",
    out_dir: str | os.PathLike | None = None,
) -> DiffusionTrainResult:
    """Train a diffusion model on ``dataset`` (uint8 N,C,H,W images; labels unused).

    With ``out_dir`` the EMA model is saved there (diffusers layout) at every checkpoint and
    at the end, and an interrupted run resumes from ``train_state.pt`` when
    ``cfg.resume``. Returns the EMA model and the loss log.
    """
    x = _check_images(dataset)
    dev = resolve_device(device)
    out = Path(out_dir) if out_dir is not None else None
    run = _setup(x, cfg, dev)
    resuming = out is not None and cfg.resume and (out / STATE_FILE).is_file()
    if cfg.init_from and not resuming:  # fine-tune: start from another model's weights
        _init_from(run, cfg)
    if resuming:
        _resume(run, cfg, out / STATE_FILE)
    inp = _Inputs.build(x, run.scheduler, cfg, dev, getattr(dataset, "name", "tensor"))

    start_step = run.step
    seen, stopped_early, seconds = _train_loop(run, inp, cfg, out)
    final_loss = run.loss_log[-1]["loss"] if run.loss_log else float("nan")
    if run.step > start_step or out is not None and not (out / STATE_FILE).is_file():
        _checkpoint(run, inp, cfg, out, final_loss, run.prior_seconds + seconds)
    run.unet.eval()
    model = DiffusionModel(
        run.ema.eval(),
        run.scheduler,
        {**inp.model_meta, "trained": True, "steps": run.step, "final_loss": final_loss},
        str(out) if out is not None else "trained",
    )
    return DiffusionTrainResult(
        model=model,
        steps=run.step,
        final_loss=final_loss,
        loss_log=run.loss_log,
        seconds=seconds,
        images_per_second=seen / max(seconds, 1e-9),
        out_dir=out,
        stopped_early=stopped_early,
    )


@dataclasses.dataclass
class _Run:
    """What a training step changes and a checkpoint saves (with the noise scheduler)."""

    unet: torch.nn.Module
    ema: torch.nn.Module
    scheduler: Any
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    gen: torch.Generator
    perm: torch.Tensor
    pos: int = 0
    step: int = 0
    loss_log: list[dict[str, float]] = dataclasses.field(default_factory=list)
    prior_seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class _Inputs:
    """What stays fixed during a run: the images on the device, the noise-schedule
    tensors and the metadata saved with the model."""

    x: torch.Tensor  # uint8 (N, C, H, W) on dev
    dev: torch.device
    t_max: int
    abar_levels: torch.Tensor  # float64, [1, abar_0, ..., abar_{T-1}] (CPU)
    sqrt_ab: torch.Tensor
    sqrt_1m_ab: torch.Tensor
    use_amp: bool
    model_meta: dict[str, Any]
    meta_train: dict[str, Any]

    @classmethod
    def build(
        cls,
        x: torch.Tensor,
        scheduler: Any,
        cfg: DiffusionTrainConfig,
        dev: torch.device,
        name: str,
    ) -> _Inputs:
        n, _, h, _ = x.shape
        t_max = cfg.effective_t_max
        abar = scheduler.alphas_cumprod.to(torch.float64)
        return cls(
            abar_levels=torch.cat([torch.ones(1, dtype=torch.float64), abar]),
            sqrt_ab=abar.sqrt().float().to(dev),
            sqrt_1m_ab=(1 - abar).sqrt().float().to(dev),
            x=x.to(dev),
            dev=dev,
            t_max=t_max,
            use_amp=cfg.amp and dev.type == "cuda",
            model_meta={"t_max": t_max, "continuous_time": bool(cfg.continuous_time)},
            meta_train={
                "config": dataclasses.asdict(cfg),
                "dataset": name,
                "dataset_size": n,
                "image_size": h,
            },
        )


def _check_images(dataset: ImageDataset | torch.Tensor) -> torch.Tensor:
    """The uint8 (N, C, H, W) square images of ``dataset`` (else :class:`ConfigError`)."""
    x = dataset.x if isinstance(dataset, ImageDataset) else dataset
    if not torch.is_tensor(x) or x.dtype != torch.uint8 or x.ndim != 4 or len(x) == 0:
        raise ConfigError("train_diffusion: expected uint8 images (N, C, H, W), N > 0")
    _, _, h, w = x.shape
    if h != w:
        raise ConfigError(f"train_diffusion: square images expected, got {h}x{w}")
    return x


def _setup(x: torch.Tensor, cfg: DiffusionTrainConfig, dev: torch.device) -> _Run:
    """A fresh run: seeded UNet and its EMA copy, optimiser, lr schedule, the batch
    generator and the first epoch's permutation."""
    n, c, h, _ = x.shape
    torch.manual_seed(cfg.seed)
    unet = build_unet(
        sample_size=h,
        in_channels=c,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        attention_resolutions=cfg.attention_resolutions,
        mid_attention=cfg.mid_attention,
        dropout=cfg.dropout,
        norm_num_groups=cfg.norm_num_groups,
    ).to(dev)
    scheduler = make_scheduler(
        cfg.beta_schedule, cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end
    )
    ema = copy.deepcopy(unet).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.steps, cfg.warmup_steps)
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(n, generator=gen)
    return _Run(unet, ema, scheduler, opt, sched, gen, perm)


def _init_from(run: _Run, cfg: DiffusionTrainConfig) -> None:
    """Load the weights of the model ``cfg.init_from`` into the UNet and its EMA."""
    from detox.diffusion.backend import load_diffusion

    src = load_diffusion(cfg.init_from)
    try:
        run.unet.load_state_dict(src.unet.state_dict())
    except RuntimeError as e:
        raise ConfigError(
            f"init_from {cfg.init_from!r}: its UNet does not match this run's network "
            f"settings {cfg.architecture()} ({str(e).splitlines()[0]})"
        ) from e
    run.ema.load_state_dict(src.unet.state_dict())


def _resume(run: _Run, cfg: DiffusionTrainConfig, path: Path) -> None:
    """Restore ``run`` from the checkpoint ``path`` (refused if its network differs)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = {"continuous_time": False, **(state.get("architecture") or {})}
    if saved != cfg.architecture():
        raise ConfigError(
            f"{path}: the checkpoint's network/schedule settings "
            f"{saved} differ from this run's {cfg.architecture()}; "
            "use another out_dir or resume=false"
        )
    run.unet.load_state_dict(state["unet"])
    run.ema.load_state_dict(state["ema"])
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["lr_schedule"])
    run.gen.set_state(state["generator"])
    run.perm, run.pos, run.step = state["perm"], int(state["pos"]), int(state["step"])
    run.loss_log = list(state["loss_log"])
    run.prior_seconds = float(state.get("seconds", 0.0))


def _checkpoint(
    run: _Run,
    inp: _Inputs,
    cfg: DiffusionTrainConfig,
    out: Path | None,
    final_loss: float,
    seconds: float,
) -> None:
    """Save the resumable state (``train_state.pt``) and the EMA model into ``out``."""
    if out is None:
        return
    _save_state(
        out / STATE_FILE,
        {
            "architecture": cfg.architecture(),
            "unet": run.unet.state_dict(),
            "ema": run.ema.state_dict(),
            "optimizer": run.opt.state_dict(),
            "lr_schedule": run.sched.state_dict(),
            "generator": run.gen.get_state(),
            "perm": run.perm,
            "pos": run.pos,
            "step": run.step,
            "loss_log": run.loss_log,
            "seconds": seconds,
        },
    )
    model = DiffusionModel(copy.deepcopy(run.ema).cpu(), run.scheduler, dict(inp.model_meta))
    model.save(
        out,
        {
            "trained": True,
            "steps": run.step,
            "final_loss": final_loss,
            "train_seconds": round(seconds, 1),
            "train": inp.meta_train,
            "loss_log": run.loss_log,
        },
    )


def _train_loop(
    run: _Run, inp: _Inputs, cfg: DiffusionTrainConfig, out: Path | None
) -> tuple[int, bool, float]:
    """Steps until ``cfg.steps`` (or ``cfg.max_minutes``), logging the mean loss every
    ``cfg.log_every`` steps and checkpointing every ``cfg.checkpoint_every``. Returns
    (images seen, stopped early, seconds of this call)."""
    t0 = time.perf_counter()
    deadline = t0 + 60.0 * cfg.max_minutes if cfg.max_minutes > 0 else math.inf
    window: list[float] = []
    seen = 0
    stopped_early = False
    bar = tqdm(
        total=cfg.steps,
        initial=run.step,
        desc="diffusion train",
        disable=not cfg.progress,
        unit="step",
        dynamic_ncols=True,
    )
    run.unet.train()
    smooth = float("nan")
    while run.step < cfg.steps:
        if time.perf_counter() > deadline:
            stopped_early = True
            break
        lv, b = _train_step(run, inp, cfg)
        window.append(lv)
        seen += b
        smooth = lv if math.isnan(smooth) else 0.98 * smooth + 0.02 * lv
        bar.update(1)
        bar.set_postfix(loss=f"{smooth:.4f}", lr=f"{run.sched.get_last_lr()[0]:.2e}", refresh=False)
        if run.step % cfg.log_every == 0 or run.step == cfg.steps:
            _log_window(run, window, t0)
            window = []
        if run.step % cfg.checkpoint_every == 0 and run.step < cfg.steps:
            final_loss = run.loss_log[-1]["loss"] if run.loss_log else lv
            seconds = run.prior_seconds + time.perf_counter() - t0
            _checkpoint(run, inp, cfg, out, final_loss, seconds)
    bar.close()
    if window:  # partial window (early stop)
        _log_window(run, window, t0)
    return seen, stopped_early, time.perf_counter() - t0


def _log_window(run: _Run, window: list[float], t0: float) -> None:
    """Append the mean loss of ``window`` (the steps since the last entry) to the log."""
    run.loss_log.append(
        {
            "step": run.step,
            "loss": sum(window) / len(window),
            "lr": run.sched.get_last_lr()[0],
            "seconds": round(run.prior_seconds + time.perf_counter() - t0, 2),
        }
    )


def _noised_batch(
    run: _Run, inp: _Inputs, cfg: DiffusionTrainConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The next batch, flipped and noised at random timesteps: (x_t, t, noise) on the
    device. Draws from ``run.gen`` in a fixed order: new epoch's permutation, flips,
    timesteps, noise."""
    dev, gen, t_max = inp.dev, run.gen, inp.t_max
    n, c, h, w = inp.x.shape
    if run.pos + cfg.batch_size > n:  # new epoch (drop the incomplete last batch)
        run.perm = torch.randperm(n, generator=gen)
        run.pos = 0
    idx = run.perm[run.pos : run.pos + cfg.batch_size] if n >= cfg.batch_size else run.perm
    run.pos += cfg.batch_size
    b = len(idx)
    flip = torch.rand(b, generator=gen) < 0.5 if cfg.flip else None
    if cfg.continuous_time:  # fractional level in (0, t_max], timestep = level - 1
        lv = t_max * (1.0 - torch.rand(b, generator=gen, dtype=torch.float64))
        ab = abar_at(inp.abar_levels, lv)
        t = (lv - 1.0).float()
        coef_x = ab.sqrt().float().to(dev).view(-1, 1, 1, 1)
        coef_n = (1.0 - ab).sqrt().float().to(dev).view(-1, 1, 1, 1)
    else:
        t = torch.randint(0, t_max, (b,), generator=gen)
        coef_x = inp.sqrt_ab[t.to(dev)].view(-1, 1, 1, 1)
        coef_n = inp.sqrt_1m_ab[t.to(dev)].view(-1, 1, 1, 1)
    noise = torch.randn((b, c, h, w), generator=gen).to(dev)
    x0 = inp.x[idx.to(dev)].float().div_(127.5).sub_(1.0)
    if flip is not None:
        f = flip.to(dev)[:, None, None, None]
        x0 = torch.where(f, x0.flip(3), x0)
    t_dev = t.to(dev)
    x_t = coef_x * x0 + coef_n * noise
    return x_t, t_dev, noise


def _train_step(run: _Run, inp: _Inputs, cfg: DiffusionTrainConfig) -> tuple[float, int]:
    """One optimiser step (and EMA update) on the next batch: (loss, batch size).
    :class:`DivergedError` when the loss is not finite."""
    x_t, t_dev, noise = _noised_batch(run, inp, cfg)
    with torch.autocast(inp.dev.type, dtype=torch.bfloat16, enabled=inp.use_amp):
        pred = run.unet(x_t, t_dev).sample
    loss = F.mse_loss(pred.float(), noise)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.unet.parameters(), cfg.grad_clip)
    run.opt.step()
    run.sched.step()
    run.step += 1
    if cfg.ema_decay > 0:
        decay = min(cfg.ema_decay, (1 + run.step) / (10 + run.step))
        ema_update(run.ema, run.unet, decay)
    else:
        run.ema.load_state_dict(run.unet.state_dict())
    lv = float(loss.detach())
    if not math.isfinite(lv):
        raise DivergedError(
            f"diffusion training: the loss became {lv} at step {run.step} (lr {cfg.lr:g}); "
            "lower the learning rate. The last checkpoint (if any) is kept, this step's "
            "weights are not saved"
        )
    return lv, len(x_t)
