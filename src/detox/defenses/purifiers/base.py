"""The purifier interface (test-time defenses).

A purifier maps input images to cleaned images before they reach the (untouched,
possibly backdoored) classifier: ``purifier.purify(x)`` with ``x`` float in [0, 1], shape
(B, C, H, W), on any device, returns a tensor of the same shape, dtype and device.

Randomness: every image gets its own noise stream, seeded from ``(seed, position)`` where
``position`` is the image's index in the overall input (``start_index`` + its row). So a
result depends on the seed and on which image it is, never on the batch size or on how a
dataset was split into batches (:func:`purify_all` passes the running offset).

Each purifier declares its hyper-parameters once, in a config dataclass (``Config``)
with ``PRESETS``; :func:`build_purifier` makes one by name.
"""

from __future__ import annotations

import dataclasses
from abc import ABC
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import torch
from tqdm.auto import tqdm

from detox.config import make_config
from detox.data.base import to_float, to_uint8
from detox.defenses.context import DefenseMethod
from detox.errors import ConfigError
from detox.registry import Registry
from detox.utils.device import resolve_device
from detox.utils.seed import derive_seed

C = TypeVar("C")


class NoiseStreams:
    """One seeded generator per image: ``(seed, start_index + row)``.

    :meth:`randn` returns the next standard-normal draw of shape (C, H, W) for every image,
    stacked (B, C, H, W) on ``device``. Each image draws from its own stream in a fixed
    order (in blocks of :attr:`BLOCK` draws), so its noise does not depend on the batch
    size or on the other images of the batch. Generators live on the CPU, or on the GPU
    for CUDA inputs (one small kernel per image per block instead of CPU sampling and a
    copy): results are reproducible per device type, CPU and CUDA streams differ.
    """

    BLOCK = 8  # draws fetched per image at a time

    def __init__(
        self,
        seed: int,
        indices: Sequence[int] | torch.Tensor,
        shape: tuple[int, int, int],
        device: torch.device | str = "cpu",
    ) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.device = torch.device(device)
        self._gen_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        self.generators = [
            torch.Generator(device=self._gen_device).manual_seed(
                derive_seed(int(seed), "purify", int(i))
            )
            for i in (indices.tolist() if torch.is_tensor(indices) else indices)
        ]
        self._buf: torch.Tensor | None = None
        self._pos = 0

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self) -> torch.Tensor:
        if self._buf is None or self._pos == self.BLOCK:
            draws = [
                torch.randn((self.BLOCK, *self.shape), generator=g, device=self._gen_device)
                for g in self.generators
            ]
            self._buf = torch.stack(draws, 1).to(self.device, non_blocking=True)
            self._pos = 0
        out = self._buf[self._pos]
        self._pos += 1
        return out


class Purifier(DefenseMethod, ABC):
    """Base class of test-time purifiers. Subclasses implement :meth:`_purify_batch`."""

    #: True for a model-aware purifier (its output depends on the classifier it protects:
    #: Sancdifi's saliency, BDMAE's and Lite-BD's queries). :meth:`prepare` then receives
    #: the victim in the :class:`~detox.defenses.context.DefenseContext` (``self.victim``),
    #: and its cached results are keyed by the victim's weights (``model_fingerprint``).
    needs_model: ClassVar[bool] = False

    def __init__(self, config: Any | None = None) -> None:
        super().__init__(config)
        self.device = torch.device("cpu")
        self.warnings: list[str] = []
        self.cached_images = 0  # images :func:`purify_all` served from its cache
        self.victim: Any = None  # the classifier it protects, if it needs_model (prepare)
        self.model_fingerprint: str | None = None

    def prepare(self, ctx: Any) -> Purifier:
        """Receive the run's :class:`~detox.defenses.context.DefenseContext` before
        purifying: a purifier that :attr:`needs_model` keeps the victim and its fingerprint
        (the runner gives the model only to those). Subclasses that override it call this
        one first."""
        if self.needs_model:
            if ctx.model is None or not ctx.model_fingerprint:
                raise ConfigError(
                    f"purifier {self.name!r} needs the victim model and its fingerprint"
                )
            self.victim, self.model_fingerprint = ctx.model, ctx.model_fingerprint
        return self

    def to(self, device: str | torch.device) -> Purifier:
        self.device = resolve_device(device)
        return self

    @property
    def batch_size(self) -> int:
        return int(getattr(self.config, "batch_size", 256))

    #: Purifiers that can show their work set ``Output``: a dataclass of per-image tensors
    #: whose first field ``x`` holds the purified images (SampDetox: stage 1, trigger map,
    #: levels), made by :meth:`_run` for one batch; ``purify(..., return_intermediates=True)``
    #: then returns one for the whole input.
    Output: ClassVar[type | None] = None

    def purify(
        self,
        x: torch.Tensor,
        seed: int | None = None,
        start_index: int = 0,
        batch_size: int | None = None,
        return_intermediates: bool = False,
    ) -> Any:
        """Purified ``x`` (float [0, 1], B x C x H x W), same shape/dtype/device as ``x``.

        ``seed`` defaults to ``config.seed``; ``start_index`` is the position of ``x[0]``
        in the overall input (noise is derived from ``(seed, start_index + row)``).
        Large inputs are processed in chunks of ``batch_size`` (default
        ``config.batch_size``); the result does not depend on it. With
        ``return_intermediates=True``: an :attr:`Output` on ``x``'s device.
        """
        check_images(x)
        seed = int(getattr(self.config, "seed", 0) if seed is None else seed)
        bs = int(batch_size or self.batch_size)
        if return_intermediates:
            if self.Output is None:
                raise ConfigError(f"purifier {self.name!r} has no intermediates to return")
            parts = [
                self._run(x[i : i + bs].to(self.device, torch.float32), seed, start_index + i)
                for i in range(0, len(x), bs)
            ]
            return self.Output(
                *(
                    torch.cat([getattr(p, f.name) for p in parts]).to(x.device)
                    for f in dataclasses.fields(self.Output)
                )
            )
        outs = []
        for i in range(0, len(x), bs):
            xb = x[i : i + bs].to(self.device, torch.float32)
            outs.append(self._purify_batch(xb, seed, start_index + i).to(x.device, x.dtype))
        if not outs:
            return x.clone()
        return torch.cat(outs)

    __call__ = purify

    def _purify_batch(self, x: torch.Tensor, seed: int, start_index: int) -> torch.Tensor:
        """Purify one batch (float32 [0, 1] on ``self.device``). Purifiers with an
        :attr:`Output` implement :meth:`_run` instead."""
        if self.Output is None:
            raise NotImplementedError(
                f"{type(self).__name__} implements neither _purify_batch nor _run"
            )
        return self._run(x, seed, start_index).x

    def _run(self, x: torch.Tensor, seed: int, start_index: int) -> Any:
        """One batch's :attr:`Output` (purifiers that set it)."""
        raise NotImplementedError

    def use_dataset_defaults(self, dataset: str | None) -> Purifier:
        """Fill settings left unset with what detox ships for ``dataset`` (SampDetox: the
        packaged diffusion model). Called by the pipeline and ``detox purify``."""
        return self

    def fingerprint(self, model_fingerprint: str | None = None) -> str:
        """A digest of everything the output depends on besides the input, the seed and
        the device: the purifier's name, its settings (less those that never change a
        result), its code (:func:`~detox.utils.fingerprint.code_fingerprint` of the
        purifier's classes: the source of their modules and of every detox module they
        import, transitively, plus library versions), its weights
        (:meth:`_fingerprint_extra`) and, for a purifier that :attr:`needs_model`, the
        classifier (``model_fingerprint``, default: the one :meth:`prepare` received;
        required then, ignored otherwise). Keys the purified-image cache of
        :func:`purify_all`."""
        import hashlib

        from detox.utils.fingerprint import code_fingerprint

        model_fingerprint = model_fingerprint or self.model_fingerprint
        if self.needs_model and not model_fingerprint:
            raise ConfigError(
                f"purifier {self.name!r} uses the classifier, so its cached results must be "
                "keyed by it: pass model_fingerprint= (e.g. "
                "detox.utils.fingerprint.state_fingerprint(model))"
            )
        cfg = {k: v for k, v in dataclasses.asdict(self.config).items() if k not in RESULT_NEUTRAL}
        h = hashlib.sha256(self.name.encode())
        h.update(repr(sorted(cfg.items())).encode())
        classes = [c for c in type(self).__mro__ if isinstance(c, type) and issubclass(c, Purifier)]
        h.update(code_fingerprint(*classes).encode())
        h.update(self._fingerprint_extra())
        if self.needs_model:
            h.update(f"model:{model_fingerprint}".encode())
        return h.hexdigest()[:24]

    def _fingerprint_extra(self) -> bytes:
        return b""

    def describe(self) -> dict[str, Any]:
        """Name, resolved settings and warnings, for run configs and summaries."""
        return {
            "name": self.name,
            "config": dataclasses.asdict(self.config),
            "warnings": list(self.warnings),
        }


# settings that never change a purified image (batching, where weights are read from:
# the weights themselves enter the fingerprint)
RESULT_NEUTRAL = frozenset({"batch_size", "diffusion"})


def check_images(x: Any) -> None:
    if not torch.is_tensor(x) or x.ndim != 4 or not x.is_floating_point():
        raise ConfigError(
            "purify: expected a float tensor (B, C, H, W) in [0, 1], got "
            + (f"{x.dtype} {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__)
        )


def purify_all(
    purifier: Purifier,
    x_uint8: torch.Tensor,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    seed: int | None = None,
    desc: str | None = None,
    cache: bool = False,
    model_fingerprint: str | None = None,
) -> torch.Tensor:
    """Purify a whole uint8 image set (N, C, H, W) batch by batch; returns uint8 on CPU.

    Image ``k`` of the set always gets the noise of position ``k``, whatever
    ``batch_size`` is.

    ``cache=True`` keeps the result in the ``purified`` store of :mod:`detox.cache`, keyed by
    :func:`purified_cache_key` (the images, the seed, the device type and
    :meth:`Purifier.fingerprint`: settings, code, weights, and the classifier's
    ``model_fingerprint`` for a purifier that needs it), written atomically: the same clean
    test set purified for several attacks' victims is computed once.
    """
    if not torch.is_tensor(x_uint8) or x_uint8.dtype != torch.uint8 or x_uint8.ndim != 4:
        raise ConfigError("purify_all: expected uint8 images (N, C, H, W)")
    purifier.to(device)
    if cache:
        return _purify_cached(
            purifier, x_uint8, batch_size, progress, seed, desc, model_fingerprint
        )
    bs = int(batch_size or purifier.batch_size)
    out = torch.empty_like(x_uint8, device="cpu")
    with tqdm(
        total=len(x_uint8),
        desc=desc or f"purify ({purifier.name})",
        disable=not progress,
        unit="img",
        dynamic_ncols=True,
    ) as bar:
        for i in range(0, len(x_uint8), bs):
            xb = to_float(x_uint8[i : i + bs], purifier.device)
            xp = purifier.purify(xb, seed=seed, start_index=i, batch_size=bs)
            out[i : i + bs] = to_uint8(xp).cpu()
            bar.update(len(xb))
    return out


def purified_cache_key(
    purifier: Purifier,
    x_uint8: torch.Tensor,
    seed: int | None = None,
    model_fingerprint: str | None = None,
) -> str:
    """The key of ``purifier``'s result on ``x_uint8`` in the purified-image cache:
    :meth:`Purifier.fingerprint` (settings, code, weights, and ``model_fingerprint`` when
    the purifier needs the classifier: required then), the seed (default
    ``config.seed``), the runtime (:func:`~detox.utils.fingerprint.runtime_fingerprint`:
    device type, bf16, CPU threads) and the images."""
    import hashlib

    from detox.utils.fingerprint import runtime_fingerprint

    seed = int(getattr(purifier.config, "seed", 0) if seed is None else seed)
    h = hashlib.sha256(purifier.fingerprint(model_fingerprint).encode())
    runtime = sorted(runtime_fingerprint(purifier.device).items())
    h.update(f"{seed}|{runtime}|{tuple(x_uint8.shape)}".encode())
    h.update(x_uint8.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


def _purify_cached(
    purifier: Purifier,
    x_uint8: torch.Tensor,
    batch_size: int | None,
    progress: bool,
    seed: int | None,
    desc: str | None,
    model_fingerprint: str | None,
) -> torch.Tensor:
    from safetensors.torch import load_file, save_file

    from detox.cache import Store

    seed = int(getattr(purifier.config, "seed", 0) if seed is None else seed)
    key = purified_cache_key(purifier, x_uint8, seed, model_fingerprint)
    store = Store("purified")
    entry = store.get(key)
    if entry is not None:
        try:
            out = load_file(str(entry.file("x.safetensors")))["x"]
            if out.shape == x_uint8.shape and out.dtype == torch.uint8:
                purifier.cached_images += len(out)
                return out
        except Exception:  # a damaged entry is recomputed and replaced
            pass
    out = purify_all(purifier, x_uint8, batch_size, purifier.device, progress, seed, desc)
    given = {
        "purifier": purifier.describe(),
        "images": list(x_uint8.shape),
        "seed": seed,
        "model_fingerprint": model_fingerprint,
    }
    store.put(
        key, lambda folder: save_file({"x": out.contiguous()}, str(folder / "x.safetensors")), given
    )
    return out


PURIFIERS: Registry[type[Purifier]] = Registry("purifier")


def build_purifier(
    name: str, preset: str | None = None, *, model: Any = None, **overrides: Any
) -> Purifier:
    """A registered purifier with its config from ``preset`` and ``overrides``.

    ``model``: an already loaded model the purifier needs (SampDetox: a
    :class:`~detox.diffusion.DiffusionModel`); otherwise it loads one from its config.
    """
    cls = PURIFIERS.get(name)
    cfg = make_config(cls.Config, preset, **overrides)
    return cls(cfg, model=model) if model is not None else cls(cfg)
