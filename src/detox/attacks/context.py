"""What an attack is given besides its images: :class:`AttackContext`.

Fixed-trigger attacks need nothing more. Learned attacks (LC, TrojanNN, LF, ISSBA,
Narcissus, HTBD) build an *artefact* first (perturbations, an optimised patch, an encoder)
from the clean training set, often through a surrogate model; :meth:`Attack.prepare`
receives the context and asks it for:

* :meth:`AttackContext.surrogate`: a classifier trained on the clean training set with the
  one training loop (:func:`detox.training.train`), a preset of
  :class:`~detox.training.TrainConfig` and the attack's seed, cached like victims;
* :meth:`AttackContext.artefact`: the attack's artefact, built once by a function the attack
  passes and then served from the ``artefacts`` store of :mod:`detox.cache`. Its key holds
  everything the artefact depends on: the attack's name, settings and seed, the code of
  its class (and every detox module it imports), the clean training set's bytes, the
  dataset, and whatever the attack adds (``given``). An artefact is tensors (saved as
  safetensors) plus a JSON record, so it can be exported, handed over and imported
  (``detox.cache.Store("artefacts").export / import_entry``).

The device and the seed (derived for this attack from the run's seed) are given too;
every random choice of an artefact must come from that seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from detox.attacks.base import AttackConfig, hp
from detox.errors import ConfigError
from detox.training import TrainConfig, TrainHook

SURROGATE_PRESETS = tuple(TrainConfig.PRESETS)


@dataclasses.dataclass
class SurrogateSettings(AttackConfig):
    """The surrogate of a learned attack: a classifier trained on the clean training set
    with a :class:`~detox.training.TrainConfig` preset, its model, epochs and learning
    rate overridable (None: the preset's). Declared once here; each attack's docstring
    says what its paper's surrogate was, and its ``paper`` preset sets these."""

    surrogate_preset: str = hp(
        "smoke",
        "TrainConfig preset",
        "[open] quick: smoke (a small CNN, trained on the clean training set); paper "
        "presets: the victim recipe's clean model",
        help="the clean surrogate, trained on the attack's training set with this preset",
        choices=SURROGATE_PRESETS,
    )
    surrogate_model: str | None = hp(
        None, "model name", "[open] None: the preset's", help="the surrogate's architecture"
    )
    surrogate_epochs: float | None = hp(
        None, "epochs", "[open] None: the preset's", help="epochs of the surrogate's training",
        range="(0, inf)",
    )  # fmt: skip
    surrogate_lr: float | None = hp(
        None, "learning rate", "[open] None: the preset's", help="the surrogate's learning rate",
        range="(0, inf)",
    )  # fmt: skip


@dataclasses.dataclass
class AttackContext:
    """See the module docstring."""

    train: Any  # the clean training set (ImageDataset)
    seed: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    dataset: str | None = None
    progress: bool = True
    cache: bool = True
    #: the training positions this attack poisons, chosen before :meth:`Attack.prepare`
    #: (None outside :func:`~detox.attacks.poison`): an attack that optimises each
    #: poisoned image (HTBD) builds only those
    index: torch.Tensor | None = None
    built: list[str] = dataclasses.field(default_factory=list)  # artefact keys built here
    used: list[str] = dataclasses.field(default_factory=list)  # keys read, built or cached

    def data_digest(self) -> str:
        from detox.cache import cache_key

        return cache_key(self.train.x, self.train.y, length=32)

    def surrogate(self, preset: str = "smoke", **overrides: Any) -> nn.Module:
        """A classifier trained on the clean training set (``TrainConfig`` ``preset`` with
        ``overrides``; seed: this attack's), in eval mode, cached by content like victims."""
        from detox.config import make_config
        from detox.trained import train_classifier
        from detox.training import TrainConfig

        tcfg = make_config(TrainConfig, preset, **{"seed": self.seed, **overrides})
        tcfg.progress = self.progress
        model, _ = train_classifier(
            self.train.x,
            self.train.y,
            list(self.train.classes),
            tcfg,
            self.device,
            self.dataset,
            cache=self.cache,
            desc="surrogate",
        )
        return model.eval()

    def surrogate_for(self, config: SurrogateSettings) -> nn.Module:
        """:meth:`surrogate` with the settings of a learned attack's config."""
        overrides = {
            k: v
            for k, v in (
                ("model", config.surrogate_model),
                ("epochs", config.surrogate_epochs),
                ("lr", config.surrogate_lr),
            )
            if v is not None
        }
        return self.surrogate(config.surrogate_preset, **overrides)

    def artefact(
        self,
        attack: Any,
        build: Callable[[], dict[str, torch.Tensor]],
        given: dict[str, Any] | None = None,
        record: dict[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``attack``'s artefact: from the cache when it holds one made from the same
        inputs, else ``build()`` (named CPU tensors), stored atomically. ``given``: what
        else the artefact depends on (joins the key); ``record``: plain facts kept beside
        it (losses, timings)."""
        from safetensors.torch import load_file, save_file

        from detox.cache import Store, cache_key
        from detox.utils.fingerprint import code_fingerprint
        from detox.utils.io import atomic_write_json

        key = cache_key(
            "attack-artefact",
            attack.name,
            dataclasses.asdict(attack.config),
            int(attack.seed),
            code_fingerprint(type(attack)),
            self.data_digest(),
            self.dataset,
            given or {},
        )
        store = Store("artefacts")
        self.used.append(key)
        entry = store.get(key) if self.cache else None
        if entry is not None:
            try:
                return load_file(str(entry.file("artefact.safetensors")))
            except Exception:  # a damaged entry is rebuilt
                pass
        tensors = build()
        if not isinstance(tensors, dict) or not all(torch.is_tensor(v) for v in tensors.values()):
            raise ConfigError(f"attack {attack.name!r}: an artefact must be a dict of tensors")
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        self.built.append(key)
        if self.cache:

            def write(folder: Any) -> None:
                save_file(tensors, str(folder / "artefact.safetensors"))
                atomic_write_json(folder / "record.json", record or {})

            info = {
                "attack": attack.name,
                "config": dataclasses.asdict(attack.config),
                "seed": int(attack.seed),
                "data_sha256": self.data_digest(),
                "dataset": self.dataset,
                "given": given or {},
            }
            store.put(key, write, info)
        return tensors


class AttackTrainHook(TrainHook):
    """Base of the :class:`~detox.training.TrainHook` of a training-controlled attack: it
    keeps its attack, and its fingerprint (which keys the victim cache) covers the attack's
    name, settings, seed and code and the hook's own code."""

    def __init__(self, attack: Any) -> None:
        self.attack = attack

    def fingerprint(self) -> str:
        from detox.cache import cache_key
        from detox.utils.fingerprint import code_fingerprint

        a = self.attack
        return cache_key(
            a.name,
            dataclasses.asdict(a.config),
            int(a.seed),
            code_fingerprint(type(a)),
            code_fingerprint(type(self)),
        )
