"""The diffusion backend: a diffusers ``UNet2DModel`` plus a noise scheduler.

* :func:`build_unet` makes an epsilon-prediction UNet from a few architecture settings
  (channels per level, res-blocks per level, attention resolutions, dropout);
  :func:`make_scheduler` a ``DDPMScheduler`` (or ``DDIMScheduler``) with a linear
  (1e-4 .. 0.02) or cosine (``squaredcos_cap_v2``) beta schedule over T = 1000 steps.
* :func:`load_diffusion` loads any diffusers-format model: a local folder in the pipeline
  layout (``unet/`` + ``scheduler/``, what :func:`save_diffusion` writes), the older root
  layout of ``google/ddpm-cifar10-32`` (UNet ``config.json`` and weights in the folder root,
  ``scheduler_config.json`` beside them), or a Hugging Face hub id where network exists.
* :func:`save_diffusion` writes the pipeline layout (safetensors weights, JSON configs,
  ``model_index.json`` so ``diffusers.DDPMPipeline.from_pretrained`` also reads it), every
  file atomically, plus ``detox_diffusion.json`` with detox's metadata (``t_max``: the
  timesteps the model was trained on, training settings, final loss).

Sampling code never calls the scheduler's ``step``: :class:`DiffusionModel` exposes the
schedule (``betas``, ``alphas_cumprod`` in float64, computed from the scheduler's betas)
and SampDetox writes its own vectorised chains from them.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from detox.data.registry import dataset_facts, registered_facts
from detox.errors import ConfigError
from detox.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from detox.utils.seed import seeded_global_rng

META_FILE = "detox_diffusion.json"
META_FORMAT = "detox.diffusion"
META_VERSION = 1
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"

# accepted names -> diffusers' names
BETA_SCHEDULES = {
    "linear": "linear",
    "cosine": "squaredcos_cap_v2",
    "squaredcos_cap_v2": "squaredcos_cap_v2",
    "scaled_linear": "scaled_linear",
    "sigmoid": "sigmoid",
}
SCHEDULER_KINDS = ("ddpm", "ddim")


def normalize_schedule(name: str) -> str:
    """``"cosine"`` -> ``"squaredcos_cap_v2"``; unknown names raise :class:`ConfigError`."""
    key = str(name).lower()
    if key not in BETA_SCHEDULES:
        raise ConfigError(
            f"beta schedule {name!r}: expected one of {', '.join(sorted(BETA_SCHEDULES))}"
        )
    return BETA_SCHEDULES[key]


# ---------------------------------------------------------------------------------------
# construction


def build_unet(
    sample_size: int = 32,
    in_channels: int = 3,
    block_out_channels: tuple[int, ...] = (128, 256, 256, 256),
    layers_per_block: int = 2,
    attention_resolutions: tuple[int, ...] = (16,),
    mid_attention: bool = True,
    dropout: float = 0.0,
    norm_num_groups: int = 32,
) -> Any:
    """An epsilon-prediction ``UNet2DModel`` for ``sample_size`` x ``sample_size`` images.

    Level ``i`` of the UNet works at resolution ``sample_size / 2**i``; it gets
    self-attention (``AttnDownBlock2D`` / ``AttnUpBlock2D``, one head, as in DDPM) when that
    resolution is in ``attention_resolutions``. The defaults are the DDPM CIFAR-10 network
    (128 channels, multipliers (1, 2, 2, 2), attention at 16x16, 2 res-blocks, ~35.7M
    parameters), the family of ``google/ddpm-cifar10-32``.
    """
    from diffusers import UNet2DModel

    chans = tuple(int(c) for c in block_out_channels)
    if not chans:
        raise ConfigError("block_out_channels must name at least one level")
    bad = [c for c in chans if c % norm_num_groups]
    if bad:
        raise ConfigError(
            f"block_out_channels {chans}: every entry must be divisible by norm_num_groups "
            f"({norm_num_groups}); lower norm_num_groups or change the channels"
        )
    if sample_size % (2 ** (len(chans) - 1)):
        raise ConfigError(
            f"image size {sample_size} is not divisible by 2**{len(chans) - 1} "
            f"(a UNet with {len(chans)} levels)"
        )
    res = [sample_size // 2**i for i in range(len(chans))]
    attn = {int(r) for r in attention_resolutions}
    down = tuple("AttnDownBlock2D" if r in attn else "DownBlock2D" for r in res)
    up = tuple("AttnUpBlock2D" if r in attn else "UpBlock2D" for r in reversed(res))
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=chans,
        layers_per_block=layers_per_block,
        down_block_types=down,
        up_block_types=up,
        dropout=dropout,
        attention_head_dim=None,  # one head over all channels (DDPM)
        norm_num_groups=norm_num_groups,
        add_attention=mid_attention,
    )


def make_scheduler(
    beta_schedule: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    kind: str = "ddpm",
) -> Any:
    """A ``DDPMScheduler`` (or ``DDIMScheduler``) with epsilon prediction.

    ``linear``: betas from ``beta_start`` to ``beta_end`` (DDPM: 1e-4 .. 0.02, T = 1000);
    ``cosine`` (= ``squaredcos_cap_v2``, Nichol & Dhariwal 2021) ignores the two ends.
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    if kind not in SCHEDULER_KINDS:
        raise ConfigError(f"scheduler kind {kind!r}: expected one of {SCHEDULER_KINDS}")
    cls = DDPMScheduler if kind == "ddpm" else DDIMScheduler
    return cls(
        num_train_timesteps=int(num_train_timesteps),
        beta_start=float(beta_start),
        beta_end=float(beta_end),
        beta_schedule=normalize_schedule(beta_schedule),
        prediction_type="epsilon",
        clip_sample=True,
    )


def abar_at(abar_levels: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """``abar`` at fractional ``levels`` (float64): log-linear interpolation between the
    integer levels of ``abar_levels`` (index = level, ``abar_levels[0] = 1``)."""
    log = abar_levels.to(torch.float64).log()
    lv = levels.to(torch.float64).clamp(0, len(log) - 1)
    lo = lv.floor().long().clamp_(max=len(log) - 2)
    frac = lv - lo
    return torch.exp(log[lo] * (1.0 - frac) + log[lo + 1] * frac)


def levels_for_abar(abar_levels: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """The fractional level whose :func:`abar_at` equals ``abar`` (the inverse map; values
    beyond the schedule's ends are clamped to its first and last level)."""
    nl = -abar_levels.to(torch.float64).log()  # increasing from 0
    q = (-abar.to(torch.float64).log()).clamp(0.0, float(nl[-1]))
    hi = torch.searchsorted(nl, q).clamp_(1, len(nl) - 1)
    lo = hi - 1
    return lo + (q - nl[lo]) / (nl[hi] - nl[lo])


# ---------------------------------------------------------------------------------------
# the model object


@dataclass
class DiffusionModel:
    """A UNet, its scheduler and detox metadata (``meta``; ``t_max`` among others).

    ``betas`` and ``alphas_cumprod`` are float64 CPU tensors computed from the
    scheduler's betas; ``abar_levels`` prepends 1.0 (level 0 = the clean image) so that
    ``abar_levels[k]`` is the signal fraction after ``k`` forward steps.
    """

    unet: Any
    scheduler: Any
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        betas = getattr(self.scheduler, "betas", None)
        if betas is None:
            raise ConfigError(
                f"scheduler {type(self.scheduler).__name__} has no 'betas'; "
                "SampDetox needs a DDPM-family scheduler (DDPM, DDIM, PNDM, ...)"
            )
        self.betas = torch.as_tensor(betas).detach().to("cpu", torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, 0)
        self.abar_levels = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])
        self.unet.eval()
        for p in self.unet.parameters():
            p.requires_grad_(False)

    # -- schedule ------------------------------------------------------------------------
    @property
    def num_train_timesteps(self) -> int:
        return int(len(self.betas))

    @property
    def beta_schedule(self) -> str:
        cfg = self.scheduler.config
        if cfg.get("trained_betas") is not None:
            return "trained_betas"
        return str(cfg.get("beta_schedule", "linear"))

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler.config.get("prediction_type", "epsilon"))

    @property
    def t_max(self) -> int:
        """Timesteps ``[0, t_max)`` were trained (``meta['t_max']``; else all of them)."""
        t = self.meta.get("t_max")
        return int(t) if t else self.num_train_timesteps

    @property
    def continuous_time(self) -> bool:
        """Trained on fractional levels (``meta['continuous_time']``, see
        :mod:`detox.diffusion.presets`): valid at any noise amount in its range, so a chain
        may follow another schedule through :meth:`timesteps_for`."""
        return bool(self.meta.get("continuous_time", False))

    @property
    def min_abar(self) -> float:
        """The signal fraction at the noisiest trained level (level ``t_max``)."""
        return float(self.abar_levels[self.t_max])

    def timesteps_for(self, abar: torch.Tensor) -> torch.Tensor:
        """The (fractional, 0-based) timesteps of this model's schedule at which the noise
        amount is ``abar``: ``level - 1`` with :func:`levels_for_abar`."""
        return levels_for_abar(self.abar_levels, abar) - 1.0

    # -- network -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def sample_size(self) -> int | None:
        s = self.unet.config.sample_size
        return int(s[0] if isinstance(s, list | tuple) else s) if s else None

    def to(self, device: str | torch.device) -> DiffusionModel:
        self.unet.to(device)
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.unet.parameters())

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int, net: Any = None) -> torch.Tensor:
        """The predicted noise of ``x_t`` at timestep(s) ``t`` (0-based, ``t < T``).

        Models trained to predict ``sample`` (x0) or ``v_prediction`` are converted to
        epsilon with the schedule, so every sampler works with any of the three. ``net``
        replaces the UNet for this call (a ``torch.compile``-d copy of it, say).
        """
        if not torch.is_tensor(t):
            t = torch.full((x_t.shape[0],), int(t), dtype=torch.long, device=x_t.device)
        out = (net or self.unet)(x_t, t).sample.float()
        kind = self.prediction_type
        if kind == "epsilon":
            return out
        ab = self.alphas_cumprod.to(x_t.device, torch.float32)[t.long()].view(-1, 1, 1, 1)
        if kind == "sample":
            return (x_t - ab.sqrt() * out) / (1 - ab).sqrt()
        if kind == "v_prediction":
            return ab.sqrt() * out + (1 - ab).sqrt() * x_t
        raise ConfigError(
            f"prediction_type {kind!r} is not supported (epsilon, sample, v_prediction)"
        )

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "parameters": self.num_parameters(),
            "sample_size": self.sample_size,
            "in_channels": self.in_channels,
            "block_out_channels": list(self.unet.config.block_out_channels),
            "beta_schedule": self.beta_schedule,
            "num_train_timesteps": self.num_train_timesteps,
            "prediction_type": self.prediction_type,
            "t_max": self.t_max,
            "continuous_time": self.continuous_time,
        }

    def save(self, path: str | os.PathLike, extra_meta: dict[str, Any] | None = None) -> Path:
        return save_diffusion(self, path, extra_meta)


def new_diffusion_model(
    sample_size: int = 32,
    in_channels: int = 3,
    block_out_channels: tuple[int, ...] = (32, 64, 128),
    layers_per_block: int = 1,
    attention_resolutions: tuple[int, ...] = (),
    mid_attention: bool = False,
    dropout: float = 0.0,
    norm_num_groups: int = 32,
    beta_schedule: str = "linear",
    num_train_timesteps: int = 1000,
    t_max: int | None = None,
    seed: int = 0,
) -> DiffusionModel:
    """A randomly initialised (seeded) model; defaults are the CPU-sized UNet (2.5M)."""
    with seeded_global_rng(seed):
        unet = build_unet(
            sample_size,
            in_channels,
            block_out_channels,
            layers_per_block,
            attention_resolutions,
            mid_attention,
            dropout,
            norm_num_groups,
        )
    meta = {"t_max": t_max or num_train_timesteps, "trained": False}
    return DiffusionModel(
        unet, make_scheduler(beta_schedule, num_train_timesteps), meta, "random-init"
    )


# ---------------------------------------------------------------------------------------
# save / load


def save_diffusion(
    model: DiffusionModel, path: str | os.PathLike, extra_meta: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` in the diffusers pipeline layout under ``path`` (atomic per file).

    ``unet/config.json``, ``unet/diffusion_pytorch_model.safetensors``,
    ``scheduler/scheduler_config.json``, ``model_index.json`` and ``detox_diffusion.json``.
    """
    import diffusers
    from safetensors.torch import save as st_save

    out = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.unet.state_dict().items()}
    atomic_write_bytes(out / "unet" / WEIGHTS_FILE, st_save(state, metadata={"format": "pt"}))
    atomic_write_text(out / "unet" / "config.json", model.unet.to_json_string())
    atomic_write_text(out / "scheduler" / "scheduler_config.json", model.scheduler.to_json_string())
    atomic_write_json(
        out / "model_index.json",
        {
            "_class_name": "DDPMPipeline",
            "_diffusers_version": diffusers.__version__,
            "scheduler": ["diffusers", type(model.scheduler).__name__],
            "unet": ["diffusers", type(model.unet).__name__],
        },
    )
    meta = {
        "format": META_FORMAT,
        "version": META_VERSION,
        **model.meta,
        **(extra_meta or {}),
        "t_max": model.t_max,
        "beta_schedule": model.beta_schedule,
        "num_train_timesteps": model.num_train_timesteps,
    }
    atomic_write_json(out / META_FILE, meta)
    return out


def _scheduler_from_config(cfg: dict[str, Any], where: str) -> Any:
    import diffusers

    name = cfg.get("_class_name", "DDPMScheduler")
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ConfigError(f"{where}: unknown scheduler class {name!r}")
    return cls.from_config(cfg)


def _is_unet_dir(d: Path) -> bool:
    cfg = d / "config.json"
    if not cfg.is_file():
        return False
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return data.get("_class_name") in ("UNet2DModel", None) and "block_out_channels" in data


PICKLE_ENV = "DETOX_ALLOW_PICKLE"  # "1": accept pickled (.bin/.pt) weights, weights_only


def _pickle_allowed(allow_pickle: bool | None) -> bool:
    if allow_pickle is None:
        return os.environ.get(PICKLE_ENV, "") not in ("", "0")
    return bool(allow_pickle)


def _refuse_pickled_weights(unet_dir: Path, where: str) -> None:
    """Only pickled weights in ``unet_dir``: refuse, naming the file and the opt-in."""
    if any(unet_dir.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in unet_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    if pickled:
        raise ConfigError(
            f"diffusion model {where!r}: its weights ({pickled[0]}) are a pickle, which can run "
            "code when loaded; detox loads safetensors by default. Convert them "
            "(safetensors.torch.save_file of the state dict), or opt in with "
            f"{PICKLE_ENV}=1 (or allow_pickle=True): they are then read with "
            "torch.load(weights_only=True)"
        )


def _load_local(root: Path, allow_pickle: bool | None = None) -> DiffusionModel:
    from diffusers import UNet2DModel

    if not root.is_dir():
        raise ConfigError(
            f"diffusion model {str(root)!r}: expected a folder in the diffusers format "
            "(unet/ + scheduler/, or config.json + weights + scheduler_config.json)"
        )
    unet_dir = next((d for d in (root / "unet", root) if _is_unet_dir(d)), None)
    if unet_dir is None:
        raise ConfigError(
            f"diffusion model {str(root)!r}: no UNet2DModel config found "
            "(looked for unet/config.json and config.json)"
        )
    pickle_ok = _pickle_allowed(allow_pickle)
    if not pickle_ok:
        _refuse_pickled_weights(unet_dir, str(root))
    try:
        # low_cpu_mem_usage=False: small models; no `accelerate` needed (nor its warning)
        unet = UNet2DModel.from_pretrained(
            unet_dir, low_cpu_mem_usage=False, use_safetensors=None if pickle_ok else True
        )
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ConfigError(f"diffusion model {str(root)!r}: cannot load the UNet: {e}") from e
    sched_cfg = next(
        (
            f
            for f in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json")
            if f.is_file()
        ),
        None,
    )
    if sched_cfg is None:
        warnings.warn(
            f"{root}: no scheduler config found; assuming DDPM linear betas 1e-4..0.02, T=1000",
            stacklevel=3,
        )
        scheduler = make_scheduler("linear")
    else:
        scheduler = _scheduler_from_config(read_json(sched_cfg), str(sched_cfg))
    meta = read_json(root / META_FILE) if (root / META_FILE).is_file() else {}
    return DiffusionModel(unet, scheduler, meta, str(root))


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host accepts a TCP connection (a quick probe, so that an offline
    machine fails in seconds instead of after a minute of download retries)."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = (
        url.hostname or "huggingface.co",
        url.port or (443 if url.scheme == "https" else 80),
    )
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_hub(
    repo_id: str, local_files_only: bool | None, allow_pickle: bool | None = None
) -> DiffusionModel:
    from diffusers import DDPMScheduler, UNet2DModel

    offline = local_files_only is None and not _hub_reachable()
    if offline:
        local_files_only = True  # only the local Hugging Face cache can help
    safe = None if _pickle_allowed(allow_pickle) else True
    kw: dict[str, Any] = {}
    if local_files_only is not None:
        kw["local_files_only"] = local_files_only
    why = (
        "the hub is not reachable from this machine"
        if offline
        else "no network access, or no such repository"
    )
    hint = (
        f"could not load diffusion model {repo_id!r} from the Hugging Face hub "
        f"({why}). Download it where network exists "
        f"(e.g. `huggingface-cli download {repo_id} --local-dir DIR`) and pass the local "
        "folder DIR instead"
    )
    errors: list[str] = []
    unet = None
    for sub in ("unet", None):
        try:
            unet = UNet2DModel.from_pretrained(
                repo_id, subfolder=sub, low_cpu_mem_usage=False, use_safetensors=safe, **kw
            )
            break
        except Exception as e:  # hub/network errors come in many types
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if unet is None:
        raise ConfigError(f"{hint}. ({'; '.join(errors)})")
    cfg = None
    for sub in ("scheduler", None):
        try:
            cfg = DDPMScheduler.load_config(repo_id, subfolder=sub, **kw)
            break
        except Exception:
            continue
    if cfg is None:
        warnings.warn(f"{repo_id}: no scheduler config; assuming DDPM linear", stacklevel=3)
        scheduler = make_scheduler("linear")
    else:
        scheduler = _scheduler_from_config(dict(cfg), repo_id)
    return DiffusionModel(unet, scheduler, {}, repo_id)


def load_diffusion(
    source: str | os.PathLike,
    device: str | torch.device = "cpu",
    local_files_only: bool | None = None,
    allow_pickle: bool | None = None,
) -> DiffusionModel:
    """Load a diffusers-format diffusion model from a local folder or a hub id.

    A local folder may use the pipeline layout (``unet/`` and ``scheduler/``) or the root
    layout (``config.json`` + weights + ``scheduler_config.json``). A string that is not an
    existing path and looks like ``owner/name`` is fetched with ``from_pretrained``
    (``local_files_only=True`` never touches the network); failures raise a
    :class:`ConfigError` naming the id and asking for a local folder.

    Weights are read from safetensors only: pickled ``.bin`` weights (which can run code
    when loaded) are refused unless ``allow_pickle=True`` or ``DETOX_ALLOW_PICKLE=1``, and
    are then read by diffusers with ``torch.load(weights_only=True)``.
    """
    from detox.utils.device import resolve_device

    path = Path(source).expanduser()
    if path.exists():
        model = _load_local(path, allow_pickle)
    elif isinstance(source, str) and _HUB_ID.match(source) and not source.startswith((".", "/")):
        model = _load_hub(source, local_files_only, allow_pickle)
    else:
        raise ConfigError(
            f"diffusion model {str(source)!r}: no such folder (and not a hub id 'owner/name')"
        )
    return model.to(resolve_device(device))


# -- weights shipped with detox --------------------------------------------------------
def packaged_diffusion(dataset: str | None = "cifar10") -> str | None:
    """The folder of the diffusion model shipped with detox for ``dataset`` (any name or
    alias :func:`detox.data.registry.dataset_facts` resolves; the folder is the dataset's
    ``diffusion`` fact; trained by ``detox diffusion train``, see docs/results.md), or
    None when there is none."""
    from importlib import resources

    facts = dataset_facts(dataset)
    if facts is None or facts.diffusion is None:
        return None
    root = resources.files("detox").joinpath("weights", facts.diffusion)
    return str(root) if root.is_dir() and root.joinpath("model_index.json").is_file() else None


def packaged_datasets() -> list[str]:
    """Canonical names of the datasets detox ships a diffusion model for."""
    return [f.name for f in registered_facts() if packaged_diffusion(f.name) is not None]
