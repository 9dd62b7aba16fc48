"""Poison a training set with one or several attacks: ``poison(train, attacks, seed, test)``.

For each attack, in the order given:

1. **target**: the spec's class, a seeded random class (``target="random"``: distinct per
   attack while the classes last; clean-label attacks only get a class with enough free
   images), or the attack's default;
2. **pool**: dirty label: free examples whose label the target map changes (all-to-one:
   not already of the target class; source-specific: of the source classes); clean label:
   free examples of the target class. "Free" = not taken by an earlier attack, so attacks
   poison *disjoint* subsets and no example is picked twice;
3. **count**: ``floor(ratio x N)``, N = the training-set size, or the size of the target
   class where the attack's ``ratio_of`` says so (clean-label attacks by default; SIG's
   BackdoorBench setting counts in the training set), at least ``min_count`` and 1; too
   few free examples is a ConfigError;
4. **indices**: a seeded random choice from the pool (sorted);
5. the trigger is applied in fixed chunks on ``device``; labels become the target map's
   (dirty) or stay (clean); ``attack_id`` records the attack;
6. **extras** (WaNet noise, BPP negatives): more free examples, modified but correctly
   labelled; ``attack_id`` stays -1, the spec records ``extra_kind``, ``n_extra`` and
   ``extra_index``;
7. **triggered test set**: test images whose label the target map changes (all-to-one: true
   label != target), triggered with the test-time trigger, with ``y_target``.

Every random choice derives from ``seed`` (and the attack's position and name), so the same
call gives the same PoisonedSet on any device.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from detox.attacks.base import ATTACKS, Attack, ratio_base
from detox.attacks.context import AttackContext
from detox.attacks.spec import AttackSpec, parse_attacks
from detox.attacks.targets import TargetMap, poison_count
from detox.data.base import ImageDataset
from detox.data.poisoned import PoisonedSet, TriggeredSet
from detox.errors import ConfigError
from detox.utils.seed import derive_seed, torch_generator


def poison(
    train: ImageDataset,
    attacks: Any,
    seed: int = 0,
    test: ImageDataset | None = None,
    *,
    device: torch.device | str = "cpu",
    test_limit: int | None = None,
    scale: str | None = None,
) -> PoisonedSet:
    """Poison ``train`` with ``attacks`` (specs, strings like ``"badnets,blended"``, or a
    suite name) and build each attack's triggered test set from ``test``.

    ``test_limit`` caps each triggered test set (a seeded subset of the eligible images).
    ``scale``: the run's preset (``smoke``, ``quick``, ``paper``); an attack that has a
    preset of that name (a learned attack's artefact settings) uses it unless its spec
    names another (``lf:preset=paper``).
    See the module docstring for the procedure.
    """
    specs = parse_attacks(attacks)
    if not isinstance(train, ImageDataset):
        raise ConfigError("poison: train must be an ImageDataset")
    if test is not None and test.image_shape != train.image_shape:
        raise ConfigError(
            f"poison: test images are {test.image_shape}, training images {train.image_shape}"
        )
    if test_limit is not None and test_limit < 1:
        raise ConfigError(f"test_limit={test_limit}: expected >= 1")
    device = torch.device(device) if isinstance(device, str) else device
    run = _Poisoning.start(train, seed, device, scale)
    for i, (spec, uname) in enumerate(zip(specs, _unique_names([s.name for s in specs]))):
        run.add(i, spec, uname, test, test_limit)
    source = dict(train.meta)
    source.setdefault("name", train.name)
    return PoisonedSet(
        x=run.x,
        y=run.y,
        y_true=run.y_true,
        attack_id=run.attack_id,
        classes=list(train.classes),
        attacks=run.records,
        seed=int(seed),
        source=source,
        test=test,
        triggered=run.triggered,
    )


@dataclasses.dataclass
class _Poisoning:
    """The state of one :func:`poison` run, one attack after another (steps 1-7 of the
    module docstring): the images and labels so far, which examples are taken, the seeded
    order in which random targets are tried."""

    train: ImageDataset
    seed: int
    device: torch.device
    x: torch.Tensor
    y: torch.Tensor
    y_true: torch.Tensor
    attack_id: torch.Tensor
    taken: torch.Tensor
    class_counts: torch.Tensor
    target_order: torch.Tensor
    used_targets: set[int] = dataclasses.field(default_factory=set)
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    triggered: dict[str, TriggeredSet] = dataclasses.field(default_factory=dict)
    scale: str | None = None  # the run's preset: attacks with a preset of that name use it

    @classmethod
    def start(
        cls, train: ImageDataset, seed: int, device: torch.device, scale: str | None = None
    ) -> _Poisoning:
        n, k = len(train), train.num_classes
        y_true = train.y.clone()
        return cls(
            train, seed, device, train.x.clone(), y_true.clone(), y_true,
            torch.full((n,), -1, dtype=torch.int64), torch.zeros(n, dtype=torch.bool),
            torch.bincount(y_true, minlength=k),
            torch.randperm(k, generator=torch_generator(derive_seed(seed, "targets"))),
            scale=scale,
        )  # fmt: skip

    def add(self, i: int, spec: AttackSpec, uname: str, test, test_limit) -> None:
        """Poison with the ``i``-th attack: target, indices, trigger, extras, test set."""
        cls = ATTACKS.get(spec.name)
        preset = spec.preset
        if preset is None and self.scale in cls.presets:
            preset = self.scale  # a learned attack's quick / paper artefact settings
        defaults = cls.preset_config(preset)
        ratio = spec.ratio if spec.ratio is not None else defaults.ratio
        label_mode = spec.label_mode or cls.label_mode
        clean = label_mode == "clean"
        if clean and spec.target_mode == "all2all":
            raise ConfigError(f"attack {uname!r}: a clean-label attack cannot be all-to-all")
        ratio_of = ratio_base(spec.params.get("ratio_of", defaults.ratio_of), label_mode)
        if ratio_of == "target_class" and not clean:
            raise ConfigError(
                f"attack {uname!r}: ratio_of='target_class' needs a clean-label attack"
            )
        tmap, target, count, idx = self._select(
            i, spec, uname, cls, defaults, ratio, ratio_of, clean
        )
        # 5. trigger
        attack: Attack = cls(
            defaults,
            seed=derive_seed(self.seed, "attack", i, spec.name),
            target_map=tmap,
            label_mode=spec.label_mode,
            ratio=ratio,
            target=target if target is not None else defaults.target,
            **dict(spec.params),
        )
        train = self.train
        attack.check_shape(train.image_shape)
        dataset = train.meta.get("dataset") or train.name
        ctx = AttackContext(
            train=train, seed=attack.seed, device=self.device, dataset=dataset, index=idx
        )
        attack.prepare(train, ctx)
        if cls.controls_training:  # shaped during the victim's training; test set after it
            self.records.append(_record(uname, spec, attack, tmap, ratio, 0, train, idx[:0], 0))
            self.records[-1].update(controls_training=True, index=i, test_limit=test_limit)
            _note_preset_and_artefacts(self.records[-1], preset, ctx)
            return
        g_apply = torch_generator(derive_seed(self.seed, "apply", i, spec.name))
        self.x[idx] = attack.apply_uint8(train.x[idx], device=self.device, generator=g_apply)
        if not clean:
            self.y[idx] = tmap(self.y_true[idx])
        self.attack_id[idx] = i
        extra_idx = self._extras(i, spec, uname, attack, count)
        # 7. triggered test set
        n_test = 0
        if test is not None:
            t = triggered_test_set(attack, test, self.seed, i, spec.name, test_limit, self.device)
            if t is not None:
                self.triggered[uname] = t
            n_test = len(t) if t is not None else 0
        self.records.append(
            _record(uname, spec, attack, tmap, ratio, count, train, extra_idx, n_test)
        )
        _note_preset_and_artefacts(self.records[-1], preset, ctx)

    def _select(self, i, spec, uname, cls, defaults, ratio, ratio_of, clean):
        """Steps 1-4: the target, the pool of eligible examples, the count, the indices
        (marked taken). A training-controlled attack takes none."""
        n, k, y_true = len(self.train), self.train.num_classes, self.y_true

        def needed(t: int | None) -> int:
            if ratio_of == "target_class":
                return poison_count(ratio, int(self.class_counts[t]), spec.min_count)
            return poison_count(ratio, n, spec.min_count)

        free = torch.bincount(y_true[~self.taken], minlength=k)  # free examples per class

        def fits(t: int) -> bool:
            if clean:
                n_free = int(free[t])
            elif spec.target_mode == "source":
                n_free = sum(int(free[s]) for s in set(spec.source_classes or ()) if s != t)
            else:
                n_free = int(free.sum() - free[t])
            return n_free >= needed(t)

        # 1. target
        if spec.target_mode == "all2all":
            target = None
        elif spec.target == "random":
            target = _random_target(uname, ratio, spec, self.target_order, self.used_targets, fits)
        else:
            target = spec.target if spec.target is not None else defaults.target
        tmap = TargetMap(spec.target_mode, target, spec.source_classes, k)
        # 2-4. pool, count, indices (a training-controlled attack poisons no stored example)
        count = 0 if cls.controls_training else needed(target)
        if clean:
            candidates = (~self.taken & (y_true == tmap.target)).nonzero().flatten()
        else:
            candidates = (~self.taken & tmap.eligible(y_true)).nonzero().flatten()
        if count > len(candidates):
            what = (
                f"images of the target class {target} ({int(self.class_counts[target])} in all)"
                if clean
                else "examples whose label it would change"
            )
            raise ConfigError(
                f"attack {uname!r}: needs {count} examples (ratio {ratio}"
                f"{', min_count ' + str(spec.min_count) if spec.min_count else ''}) but only "
                f"{len(candidates)} free {what} remain"
            )
        g_sel = torch_generator(derive_seed(self.seed, "select", i, spec.name))
        idx = candidates[torch.randperm(len(candidates), generator=g_sel)[:count]].sort().values
        self.taken[idx] = True
        return tmap, target, count, idx

    def _extras(self, i, spec, uname, attack, count) -> torch.Tensor:
        """Step 6: the attack's extra, correctly labelled examples (WaNet's noise, BPP's
        negatives), from the free examples."""
        n_extra = attack.n_extra(count, len(self.train))
        if not n_extra:
            return torch.zeros(0, dtype=torch.int64)
        free = (~self.taken).nonzero().flatten()
        if n_extra > len(free):
            raise ConfigError(
                f"attack {uname!r}: needs {n_extra} extra {attack.extra_kind} examples "
                f"but only {len(free)} free examples remain"
            )
        g_extra = torch_generator(derive_seed(self.seed, "extra-select", i, spec.name))
        extra_idx = free[torch.randperm(len(free), generator=g_extra)[:n_extra]].sort().values
        self.taken[extra_idx] = True
        g = torch_generator(derive_seed(self.seed, "extra", i, spec.name))
        self.x[extra_idx] = attack.apply_uint8(
            self.train.x[extra_idx], extra=True, device=self.device, generator=g
        )
        return extra_idx


def triggered_test_set(
    attack: Attack,
    test: ImageDataset,
    seed: int,
    index: int,
    name: str,
    test_limit: int | None,
    device: torch.device | str = "cpu",
) -> TriggeredSet | None:
    """The triggered test images of the ``index``-th attack of a run (seeded by the run's
    ``seed``): every test image its target map applies to (a seeded subset of
    ``test_limit``), triggered; None when no test image is eligible."""
    tmap = attack.target_map
    tidx = tmap.eligible(test.y).nonzero().flatten()
    if test_limit is not None and len(tidx) > test_limit:
        g_t = torch_generator(derive_seed(seed, "test-select", index, name))
        tidx = tidx[torch.randperm(len(tidx), generator=g_t)[:test_limit]].sort().values
    if not len(tidx):
        return None
    g_t = torch_generator(derive_seed(seed, "test", index, name))
    xt = attack.apply_uint8(test.x[tidx], train=False, device=device, generator=g_t)
    return TriggeredSet(xt, test.y[tidx].clone(), tmap(test.y[tidx]), tidx)


def _unique_names(names: list[str]) -> list[str]:
    out, seen = [], {}
    for nm in names:
        seen[nm] = seen.get(nm, 0) + 1
        out.append(nm if seen[nm] == 1 else f"{nm}-{seen[nm]}")
    return out


def _random_target(uname, ratio, spec, order: torch.Tensor, used: set[int], fits) -> int:
    """The first class in the seeded ``order`` that no earlier attack targets and that has
    room for the attack; else the first class with room (targets may then repeat)."""
    first_fit = None
    for t in (int(c) for c in order):
        if t in used and first_fit is not None:
            continue
        if fits(t):
            if t not in used:
                used.add(t)
                return t
            first_fit = t
    if first_fit is None:
        raise ConfigError(
            f"attack {uname!r}: no class has enough free examples for ratio {ratio}"
            f"{' and min_count ' + str(spec.min_count) if spec.min_count else ''}"
        )
    return first_fit


def _note_preset_and_artefacts(rec: dict[str, Any], preset: str | None, ctx: Any) -> None:
    """The preset actually used, and the cache keys of the artefacts the attack read
    (``detox attack fit`` exports them), in the attack's record."""
    rec["preset"] = preset
    if ctx.used:
        rec["artefacts"] = list(ctx.used)


def _record(
    uname: str,
    spec: AttackSpec,
    attack: Attack,
    tmap: TargetMap,
    ratio: float,
    count: int,
    train: ImageDataset,
    extra_idx: torch.Tensor,
    n_test: int,
) -> dict[str, Any]:
    params = dataclasses.asdict(attack.config)
    params.pop("ratio", None)
    params.pop("target", None)
    return {
        "name": uname,
        "attack": attack.name,
        "label_mode": attack.label_mode,
        **tmap.to_dict(),
        "ratio": ratio,
        "ratio_of": attack.ratio_base(),
        "preset": spec.preset,
        "min_count": spec.min_count,
        "n_poisoned": int(count),
        "seed": attack.seed,
        "params": params,
        "effective_params": attack.effective_params(train.image_shape),
        "large_image": attack.is_large(train.image_shape),
        "extra_kind": attack.extra_kind,
        "n_extra": len(extra_idx),
        "extra_index": extra_idx.tolist(),
        "n_triggered_test": n_test,
        "spec": str(spec),
    }


def attack_from_record(record: dict[str, Any], num_classes: int) -> Attack:
    """Rebuild the attack of a PoisonedSet ``attacks`` entry (same seed, same trigger).

    Attacks that need the training set (Refool's reflection pool) also need ``prepare``.
    """
    tmap = TargetMap(
        record.get("target_mode", "all2one"),
        record.get("target"),
        tuple(record["source_classes"]) if record.get("source_classes") else None,
        num_classes,
    )
    cls = ATTACKS.get(record["attack"])
    defaults = cls.Config()  # ratio and target are declared once, in AttackConfig
    target = record.get("target")
    config = cls.Config(
        **record.get("params", {}),
        ratio=record.get("ratio", defaults.ratio),
        target=target if target is not None else defaults.target,
    )
    return cls(
        config, seed=int(record["seed"]), target_map=tmap, label_mode=record.get("label_mode")
    )
