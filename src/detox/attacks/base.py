"""The attack interface: a typed config, a registry, and a base class that does the chores.

An attack implements its trigger only, in one of three forms: :meth:`Attack.stamp` (fixed
pixels overwritten: BadNets, Patch), :meth:`Attack.affine` (``clamp(scale * x + bias)``:
blends and additive patterns), or :meth:`Attack._trigger` (anything else), plus
:meth:`Attack.min_size` when the trigger needs room. The first two forms let the base class
run the trigger on uint8 data without per-pixel float round trips. The base class handles:

* **inputs**: float [0, 1] ``(B, C, H, W)`` tensors on any device and dtype (uint8 is
  converted), output clamped to [0, 1];
* **seeding**: fixed triggers (patterns, warping fields) are generated on the CPU from the
  attack's seed and cached per image shape and device, so the same seed gives the same
  trigger on every device; per-example randomness comes from a ``torch.Generator`` (CPU,
  seeded) passed in by the caller or derived from the seed;
* **label maps**: dirty-label attacks relabel with their :class:`~detox.attacks.targets.TargetMap`,
  clean-label attacks keep the labels;
* **image size**: a config field ``foo_large`` is the value of ``foo`` for images of at least
  :data:`LARGE_SIZE` pixels (BaDLoss's "large" settings), read with :meth:`Attack.param`;
* **batching**: :meth:`Attack.apply_uint8` runs over uint8 datasets in fixed-size chunks.

Where the paper, the authors' code and BackdoorBench differ, an attack offers each as a
named preset (:attr:`Attack.presets`, picked with ``preset=`` or the spec key
``name:preset=...``); its config's defaults are one of them and its docstring says which.

Adding an attack is one new module with a config dataclass and an :class:`Attack` subclass
decorated with :func:`register`, plus its import in ``detox/attacks/__init__.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from detox.attacks.targets import TargetMap
from detox.config import check_fields, describe_fields, hp  # hp: re-exported for attacks
from detox.errors import ConfigError
from detox.registry import Registry
from detox.utils.seed import derive_seed, torch_generator

ATTACKS: Registry[type[Attack]] = Registry("attack")

#: Images whose smaller side has at least this many pixels use the attacks' ``*_large``
#: settings (BaDLoss uses its large settings on Imagenette/ImageNet; we apply them from
#: 64 px, i.e. to Tiny-ImageNet as well).
LARGE_SIZE = 64

#: Images per chunk in :meth:`Attack.apply_uint8` (small enough for the CPU caches).
#: Per-example random draws are taken chunk by chunk from one generator, so results depend
#: on it: keep it fixed (it is the same on every device).
CHUNK = 128

#: Intra-op threads of :meth:`Attack.apply_uint8` on the CPU. Its chunked element-wise
#: passes are memory-bound: a second thread gains little, and on a loaded machine the
#: threads' barriers made them several times slower (measured on the 2-core dev machine).
CPU_THREADS = 1

LABEL_MODES = ("dirty", "clean")
#: What an attack's ``ratio`` is a fraction of (see :attr:`AttackConfig.ratio_of`).
RATIO_OF = ("train", "target_class")


def ratio_base(ratio_of: str | None, label_mode: str) -> str:
    """What a ``ratio`` counts: ``ratio_of`` when set, else the target class for a
    clean-label attack and the training set for a dirty-label one."""
    if ratio_of is not None:
        return ratio_of
    return "target_class" if label_mode == "clean" else "train"


@dataclasses.dataclass
class AttackConfig:
    """Settings shared by every attack: how much to poison and which class to target.

    ``ratio_of`` says what ``ratio`` is a fraction of: by default clean-label attacks read
    it as a fraction of the target class and dirty-label ones as a fraction of the whole
    training set; SIG's BackdoorBench setting reads a clean-label ratio as a fraction of
    the whole training set, drawn from the target class.
    """

    ratio: float = hp(
        0.1, "fraction", "BackdoorBench default (METHODS.md section 4)", range="(0, 1]"
    )
    target: int = hp(
        0,
        "class index",
        "BackdoorBench default, all-to-one (METHODS.md section 4)",
        range="[0, inf)",
    )
    ratio_of: str | None = hp(
        None,
        "train | target_class",
        "[open] what ratio is a fraction of; None: the training set (dirty label), the "
        "target class (clean label)",
        "BackdoorBench reads a clean-label ratio as a fraction of the whole training set, "
        "drawn from the target class",
        choices=RATIO_OF,
    )

    def validate(self) -> None:
        """Checks no declared range can express (ranges and choices: :func:`check_fields`)."""
        if int(self.target) != self.target:
            raise ConfigError(f"target={self.target!r}: expected a class index (an integer)")


def register(cls: type[Attack]) -> type[Attack]:
    """Class decorator: register ``cls`` under ``cls.name`` and ``cls.aliases``."""
    ATTACKS.register(cls.name, *cls.aliases)(cls)
    return cls


class Attack:
    """Base class of every attack. See the module docstring; subclasses set the class
    attributes and implement :meth:`_trigger`."""

    name: ClassVar[str] = "attack"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[AttackConfig]] = AttackConfig
    #: "dirty": poisoned examples are relabelled; "clean": target-class images, labels kept.
    label_mode: str = "dirty"
    #: Named settings of the attack (preset name -> config values), where the papers, the
    #: authors' code and BackdoorBench differ. The config's defaults are always one of them.
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Kind of extra, correctly labelled, modified training examples ("noise" for WaNet,
    #: "negative" for BPP) or None. See :meth:`n_extra` and :meth:`_extra`.
    extra_kind: ClassVar[str | None] = None

    def __init__(
        self,
        config: AttackConfig | None = None,
        *,
        seed: int = 0,
        target_map: TargetMap | None = None,
        label_mode: str | None = None,
        preset: str | None = None,
        **params: Any,
    ) -> None:
        from detox.config import make_config

        if config is None:
            config = self.preset_config(preset)
        elif preset is not None:
            raise ConfigError(f"attack {self.name!r}: pass a config or a preset, not both")
        if not isinstance(config, self.Config):
            raise ConfigError(
                f"attack {self.name!r}: config must be a {self.Config.__name__}, "
                f"got {type(config).__name__}"
            )
        if params:  # params (strings coerced by make_config) on top of the given config
            fields = {f.name for f in dataclasses.fields(self.Config)}
            unknown = sorted(set(params) - fields)
            if unknown:
                raise ConfigError(
                    f"attack {self.name!r} has no setting {unknown[0]!r}; "
                    f"valid settings: {', '.join(sorted(fields))}"
                )
            merged = {**dataclasses.asdict(config), **params}
            config = make_config(self.Config, **merged)  # make_config drops None values
            config = dataclasses.replace(config, **{k: v for k, v in merged.items() if v is None})
        check_fields(config)  # declared ranges and choices (make_config checks them too)
        config.validate()
        self.config = config
        self.seed = int(seed)
        self.target_map = (
            target_map if target_map is not None else TargetMap("all2one", config.target)
        )
        if label_mode is not None:
            if label_mode not in LABEL_MODES:
                raise ConfigError(
                    f"label_mode={label_mode!r}: expected one of {', '.join(LABEL_MODES)}"
                )
            self.label_mode = label_mode
        self._cache: dict[tuple, torch.Tensor] = {}

    @classmethod
    def preset_config(cls, preset: str | None = None) -> AttackConfig:
        """The config of ``preset`` (None: the defaults); unknown names raise ConfigError
        listing the attack's presets."""
        if preset is None:
            return cls.Config()
        if preset not in cls.presets:
            valid = ", ".join(sorted(cls.presets)) or "none"
            raise ConfigError(f"attack {cls.name!r} has no preset {preset!r}; presets: {valid}")
        return dataclasses.replace(cls.Config(), **cls.presets[preset])

    def ratio_base(self) -> str:
        """What ``ratio`` counts: ``"train"`` or ``"target_class"`` (:func:`ratio_base`)."""
        return ratio_base(self.config.ratio_of, self.label_mode)

    # -- to implement: one of _trigger, stamp, affine ------------------------------------
    def _trigger(self, x: torch.Tensor, *, train: bool, generator: torch.Generator) -> torch.Tensor:
        """Return a new tensor of triggered images for float ``x`` (never ``x`` itself,
        never modified in place; the base class clamps the result in place).

        The default uses :meth:`stamp` or :meth:`affine`; attacks that are neither
        (warping, squeezing, per-example reflections) override this method.
        """
        st = self.stamp(tuple(x.shape[1:]))
        if st is not None:
            rows, cols, values = st
            out = x.clone()
            out[..., rows, cols] = values.to(x.device, x.dtype)
            return out
        af = self.affine(tuple(x.shape[1:]), x, train)
        if af is None:
            raise NotImplementedError(f"attack {self.name!r} implements no trigger")
        scale, bias = af
        return torch.add(bias, x, alpha=scale)

    def stamp(
        self, shape: tuple[int, int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Triggers that overwrite fixed pixels: ``(rows, cols, values)`` (values in [0, 1],
        the same in every channel) for images of ``shape``; None otherwise. Stamps run on
        uint8 data directly in :meth:`apply_uint8`."""
        return None

    def affine(
        self, shape: tuple[int, int, int], like: torch.Tensor, train: bool
    ) -> tuple[float, torch.Tensor] | None:
        """Triggers of the form ``clamp(scale * x + bias)`` (blends, additive patterns):
        ``(scale, bias)`` for images of ``shape``, ``bias`` broadcastable to (C, H, W) on
        ``like``'s device and dtype; None otherwise. :meth:`apply_uint8` fuses them into
        one pass on the 0-255 scale."""
        return None

    def min_size(self, shape: tuple[int, int, int]) -> int:
        """Smallest image side (pixels) the trigger fits in, for images of ``shape``."""
        return 1

    #: True for a training-controlled attack (Input-aware): it poisons no stored example;
    #: :meth:`training_hook` shapes each batch of the victim's training instead, and its
    #: triggered test set is made once the victim (and what the hook learned) exists.
    controls_training: ClassVar[bool] = False

    #: True for a learned attack (LF, Narcissus): its trigger is an artefact that
    #: :meth:`prepare` builds with a surrogate or an optimisation, so the attack has no
    #: trigger before it is prepared with a training set.
    learned: ClassVar[bool] = False

    def prepare(self, train: Any, ctx: Any = None) -> None:
        """Called by :func:`~detox.attacks.poison` with the clean training set and the
        :class:`~detox.attacks.context.AttackContext` before any trigger is applied: Refool
        picks its reflection images here; a learned attack builds (or loads) its artefact
        with ``ctx.artefact(self, build)``, training a surrogate with ``ctx.surrogate()``.
        Default: nothing."""

    def training_hook(self, ctx: Any) -> Any:
        """For an attack that :attr:`controls_training`: the
        :class:`~detox.training.TrainHook` that shapes the victim's training batches, owned
        by this attack (its trigger reads what the hook learned)."""
        raise NotImplementedError(f"attack {self.name!r} does not control the training")

    def n_extra(self, n_poisoned: int, n_total: int) -> int:
        """Number of extra correctly labelled examples (see :attr:`extra_kind`)."""
        return 0

    def _extra(self, x: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError(f"attack {self.name!r} has no extra examples")

    # -- helpers for subclasses -------------------------------------------------------------
    def is_large(self, shape: tuple[int, ...]) -> bool:
        """True when the image (C, H, W) or batch shape uses the ``*_large`` settings."""
        h, w = shape[-2:]
        return min(int(h), int(w)) >= LARGE_SIZE

    def param(self, key: str, shape: tuple[int, ...]) -> Any:
        """``config.<key>``, or ``config.<key>_large`` for large images when it is set."""
        if self.is_large(shape):
            large = getattr(self.config, f"{key}_large", None)
            if large is not None:
                return large
        return getattr(self.config, key)

    def generator(self, *keys: object) -> torch.Generator:
        """A CPU generator seeded from the attack's seed and ``keys``."""
        return torch_generator(derive_seed(self.seed, self.name, *keys))

    def fixed(
        self,
        key: str,
        shape: tuple[int, int, int],
        like: torch.Tensor,
        build: Callable[[torch.Generator, int, int, int], torch.Tensor],
    ) -> torch.Tensor:
        """A fixed tensor (pattern, field) built once per image shape on the CPU from the
        seed by ``build(generator, C, H, W)``, then cached on ``like``'s device and dtype."""
        c, h, w = (int(s) for s in shape)
        base_key = (key, c, h, w)
        if base_key not in self._cache:
            self._cache[base_key] = build(self.generator(key, c, h, w), c, h, w).cpu()
        dev_key = (*base_key, str(like.device), like.dtype)
        if dev_key not in self._cache:
            t = self._cache[base_key]
            self._cache[dev_key] = t.to(
                like.device, like.dtype if t.is_floating_point() else t.dtype
            )
        return self._cache[dev_key]

    # -- public ---------------------------------------------------------------------------
    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Raise :class:`ConfigError` when the trigger does not fit images of ``shape``."""
        c, h, w = (int(s) for s in shape[-3:])
        if c not in (1, 3):
            raise ConfigError(f"attack {self.name!r}: images must have 1 or 3 channels, got {c}")
        need = self.min_size((c, h, w))
        if min(h, w) < need:
            raise ConfigError(
                f"attack {self.name!r}: the trigger needs images of at least {need}x{need} "
                f"pixels, got {h}x{w}"
            )

    def trigger(
        self, x: torch.Tensor, *, train: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Triggered copy of float images ``x`` (B, C, H, W) in [0, 1]."""
        x = _as_float_batch(x, self.name)
        self.check_shape(tuple(x.shape))
        gen = generator if generator is not None else self.generator("apply", train)
        return self._trigger(x, train=train, generator=gen).clamp_(0.0, 1.0)

    def apply(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        train: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x_poisoned, y_poisoned)``: triggered images and labels as trained.

        Deterministic for a given seed: per-example random draws (if any) come from
        ``generator`` or, when it is None, from a fresh generator seeded by the attack.
        ``train=False`` gives the test-time trigger (differs only where the paper says so).
        """
        xp = self.trigger(x, train=train, generator=generator)
        if y is None:
            return xp, None
        y = torch.as_tensor(y).to(xp.device)
        yp = y.clone() if self.label_mode == "clean" else self.target_map(y)
        return xp, yp

    def extra(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Modified, *correctly labelled* copies of ``x`` (WaNet noise, BPP negatives)."""
        x = _as_float_batch(x, self.name)
        self.check_shape(tuple(x.shape))
        gen = generator if generator is not None else self.generator("extra")
        return self._extra(x, generator=gen).clamp_(0.0, 1.0)

    def apply_uint8(
        self,
        x: torch.Tensor,
        *,
        train: bool = True,
        extra: bool = False,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
        chunk: int = CHUNK,
    ) -> torch.Tensor:
        """Trigger (or, with ``extra=True``, make extra examples of) uint8 images ``x``
        (N, C, H, W) in chunks on ``device``; returns uint8 on ``x``'s device."""
        if x.dtype != torch.uint8:
            raise ConfigError(f"attack {self.name!r}: apply_uint8 expects uint8 images")
        if torch.device(device).type != "cpu" or torch.get_num_threads() <= CPU_THREADS:
            return self._apply_uint8(x, train, extra, device, generator, chunk)
        threads = torch.get_num_threads()
        torch.set_num_threads(CPU_THREADS)
        try:
            return self._apply_uint8(x, train, extra, device, generator, chunk)
        finally:
            torch.set_num_threads(threads)

    def _apply_uint8(self, x, train, extra, device, generator, chunk) -> torch.Tensor:
        if generator is None:
            generator = self.generator("extra" if extra else "apply", train)
        shape = tuple(x.shape[1:])
        self.check_shape((1, *shape))
        st = None if extra else self.stamp(shape)
        if st is not None:  # fixed pixels: exact, in uint8, on the data's own device
            rows, cols, values = st
            out = x.clone()
            out[..., rows, cols] = values.mul(255.0).round_().to(torch.uint8).to(x.device)
            return out
        out = torch.empty_like(x)
        like = torch.empty(0, device=device)
        af = None if extra else self.affine(shape, like, train)
        if af is not None:  # one fused pass per chunk on the 0-255 scale
            scale, bias = af
            # +0.5 then truncation by the uint8 cast = rounding (half up); the clamp is
            # skipped when the affine map provably stays in [0, 255] (convex blends)
            bias255 = bias * 255.0 + 0.5
            lo, hi = float(bias255.min()), float(bias255.max())
            inside = scale >= 0 and lo >= 0.5 and hi + 255.0 * scale <= 255.5
        for i in range(0, len(x), chunk):
            xb = x[i : i + chunk].to(device, non_blocking=True).float()
            if af is not None:
                xb = torch.add(bias255, xb, alpha=scale, out=xb)
                if not inside:
                    xb.clamp_(0.5, 255.5)
            else:
                xb = xb.div_(255.0)
                xb = (
                    self.extra(xb, generator=generator)
                    if extra
                    else self.trigger(xb, train=train, generator=generator)
                )
                xb = xb.mul_(255.0).add_(0.5)  # in [0.5, 255.5]: the cast rounds
            out[i : i + chunk].copy_(xb)
        return out

    def effective_params(self, shape: tuple[int, ...]) -> dict[str, Any]:
        """The settings in force for images of ``shape`` (``*_large`` values resolved)."""
        cfg = dataclasses.asdict(self.config)
        out = {}
        for k in cfg:
            if k.endswith("_large") or k in ("ratio", "target", "ratio_of"):
                continue
            out[k] = self.param(k, shape)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed}, label_mode={self.label_mode!r}, config={self.config})"


def _as_float_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"attack {name!r}: images must be a torch.Tensor")
    if x.ndim == 3:
        raise ConfigError(f"attack {name!r}: expected a batch (B, C, H, W), got {tuple(x.shape)}")
    if x.ndim != 4:
        raise ConfigError(f"attack {name!r}: images must be (B, C, H, W), got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if not x.is_floating_point():
        raise ConfigError(f"attack {name!r}: images must be float in [0, 1] or uint8")
    return x


def make_attack(
    name: str,
    *,
    seed: int = 0,
    target_map: TargetMap | None = None,
    label_mode: str | None = None,
    preset: str | None = None,
    **params: Any,
) -> Attack:
    """Build a registered attack by name (unknown names raise ConfigError listing them),
    from its ``preset`` (None: the defaults) with ``params`` on top."""
    return ATTACKS.get(name)(
        seed=seed, target_map=target_map, label_mode=label_mode, preset=preset, **params
    )


def attack_params(name: str) -> list[dict[str, Any]]:
    """The settings of attack ``name``: name, type, default, unit, source, help, range,
    choices (:func:`detox.config.describe_fields` plus the type)."""
    import typing

    cls = ATTACKS.get(name)
    hints = typing.get_type_hints(cls.Config)
    rows = []
    for row in describe_fields(cls.Config):
        t = hints[row["name"]]
        rows.append({"name": row.pop("name"), "type": getattr(t, "__name__", str(t)), **row})
    return rows
