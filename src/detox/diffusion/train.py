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
    x = dataset.x if isinstance(dataset, ImageDataset) else dataset
    if not torch.is_tensor(x) or x.dtype != torch.uint8 or x.ndim != 4 or len(x) == 0:
        raise ConfigError("train_diffusion: expected uint8 images (N, C, H, W), N > 0")
    n, c, h, w = x.shape
    if h != w:
        raise ConfigError(f"train_diffusion: square images expected, got {h}x{w}")
    dev = resolve_device(device)
    out = Path(out_dir) if out_dir is not None else None
    t_max = cfg.effective_t_max

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
    pos = 0
    step = 0
    loss_log: list[dict[str, float]] = []
    prior_seconds = 0.0

    resuming = out is not None and cfg.resume and (out / STATE_FILE).is_file()
    if cfg.init_from and not resuming:  # fine-tune: start from another model's weights
        from detox.diffusion.backend import load_diffusion

        src = load_diffusion(cfg.init_from)
        try:
            unet.load_state_dict(src.unet.state_dict())
        except RuntimeError as e:
            raise ConfigError(
                f"init_from {cfg.init_from!r}: its UNet does not match this run's network "
                f"settings {cfg.architecture()} ({str(e).splitlines()[0]})"
            ) from e
        ema.load_state_dict(src.unet.state_dict())
    if resuming:
        state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
        saved = {"continuous_time": False, **(state.get("architecture") or {})}
        if saved != cfg.architecture():
            raise ConfigError(
                f"{out / STATE_FILE}: the checkpoint's network/schedule settings "
                f"{saved} differ from this run's {cfg.architecture()}; "
                "use another out_dir or resume=false"
            )
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["lr_schedule"])
        gen.set_state(state["generator"])
        perm, pos, step = state["perm"], int(state["pos"]), int(state["step"])
        loss_log = list(state["loss_log"])
        prior_seconds = float(state.get("seconds", 0.0))

    abar = scheduler.alphas_cumprod.to(torch.float64)
    abar_levels = torch.cat([torch.ones(1, dtype=torch.float64), abar])
    sqrt_ab = abar.sqrt().float().to(dev)
    sqrt_1m_ab = (1 - abar).sqrt().float().to(dev)
    x_dev = x.to(dev)
    use_amp = cfg.amp and dev.type == "cuda"
    model_meta = {"t_max": t_max, "continuous_time": bool(cfg.continuous_time)}
    meta_train = {
        "config": dataclasses.asdict(cfg),
        "dataset": getattr(dataset, "name", "tensor"),
        "dataset_size": n,
        "image_size": h,
    }

    def checkpoint(final_loss: float, seconds: float) -> None:
        if out is None:
            return
        _save_state(
            out / STATE_FILE,
            {
                "architecture": cfg.architecture(),
                "unet": unet.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": opt.state_dict(),
                "lr_schedule": sched.state_dict(),
                "generator": gen.get_state(),
                "perm": perm,
                "pos": pos,
                "step": step,
                "loss_log": loss_log,
                "seconds": seconds,
            },
        )
        model = DiffusionModel(copy.deepcopy(ema).cpu(), scheduler, dict(model_meta))
        model.save(
            out,
            {
                "trained": True,
                "steps": step,
                "final_loss": final_loss,
                "train_seconds": round(seconds, 1),
                "train": meta_train,
                "loss_log": loss_log,
            },
        )

    t0 = time.perf_counter()
    deadline = t0 + 60.0 * cfg.max_minutes if cfg.max_minutes > 0 else math.inf
    window: list[float] = []
    seen = 0
    start_step = step
    stopped_early = False
    bar = tqdm(
        total=cfg.steps,
        initial=step,
        desc="diffusion train",
        disable=not cfg.progress,
        unit="step",
        dynamic_ncols=True,
    )
    unet.train()
    smooth = float("nan")
    while step < cfg.steps:
        if time.perf_counter() > deadline:
            stopped_early = True
            break
        if pos + cfg.batch_size > n:  # new epoch (drop the incomplete last batch)
            perm = torch.randperm(n, generator=gen)
            pos = 0
        idx = perm[pos : pos + cfg.batch_size] if n >= cfg.batch_size else perm
        pos += cfg.batch_size
        b = len(idx)
        flip = torch.rand(b, generator=gen) < 0.5 if cfg.flip else None
        if cfg.continuous_time:  # fractional level in (0, t_max], timestep = level - 1
            lv = t_max * (1.0 - torch.rand(b, generator=gen, dtype=torch.float64))
            ab = abar_at(abar_levels, lv)
            t = (lv - 1.0).float()
            coef_x = ab.sqrt().float().to(dev).view(-1, 1, 1, 1)
            coef_n = (1.0 - ab).sqrt().float().to(dev).view(-1, 1, 1, 1)
        else:
            t = torch.randint(0, t_max, (b,), generator=gen)
            coef_x = sqrt_ab[t.to(dev)].view(-1, 1, 1, 1)
            coef_n = sqrt_1m_ab[t.to(dev)].view(-1, 1, 1, 1)
        noise = torch.randn((b, c, h, w), generator=gen).to(dev)
        x0 = x_dev[idx.to(dev)].float().div_(127.5).sub_(1.0)
        if flip is not None:
            f = flip.to(dev)[:, None, None, None]
            x0 = torch.where(f, x0.flip(3), x0)
        t_dev = t.to(dev)
        x_t = coef_x * x0 + coef_n * noise
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            pred = unet(x_t, t_dev).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        step += 1
        if cfg.ema_decay > 0:
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            ema_update(ema, unet, decay)
        else:
            ema.load_state_dict(unet.state_dict())
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise DivergedError(
                f"diffusion training: the loss became {lv} at step {step} (lr {cfg.lr:g}); "
                "lower the learning rate. The last checkpoint (if any) is kept, this step's "
                "weights are not saved"
            )
        window.append(lv)
        seen += b
        smooth = lv if math.isnan(smooth) else 0.98 * smooth + 0.02 * lv
        bar.update(1)
        bar.set_postfix(loss=f"{smooth:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}", refresh=False)
        if step % cfg.log_every == 0 or step == cfg.steps:
            loss_log.append(
                {
                    "step": step,
                    "loss": sum(window) / len(window),
                    "lr": sched.get_last_lr()[0],
                    "seconds": round(prior_seconds + time.perf_counter() - t0, 2),
                }
            )
            window = []
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            checkpoint(
                loss_log[-1]["loss"] if loss_log else lv, prior_seconds + time.perf_counter() - t0
            )
    bar.close()
    if window:  # partial window (early stop)
        loss_log.append(
            {
                "step": step,
                "loss": sum(window) / len(window),
                "lr": sched.get_last_lr()[0],
                "seconds": round(prior_seconds + time.perf_counter() - t0, 2),
            }
        )
    seconds = time.perf_counter() - t0
    final_loss = loss_log[-1]["loss"] if loss_log else float("nan")
    if step > start_step or out is not None and not (out / STATE_FILE).is_file():
        checkpoint(final_loss, prior_seconds + seconds)
    unet.eval()
    model = DiffusionModel(
        ema.eval(),
        scheduler,
        {**model_meta, "trained": True, "steps": step, "final_loss": final_loss},
        str(out) if out is not None else "trained",
    )
    return DiffusionTrainResult(
        model=model,
        steps=step,
        final_loss=final_loss,
        loss_log=loss_log,
        seconds=seconds,
        images_per_second=seen / max(seconds, 1e-9),
        out_dir=out,
        stopped_early=stopped_early,
    )
