"""The benchmark grid: a TOML or YAML file naming datasets x attacks x defenses x seeds.

    # bench.toml
    name = "cifar10-quick"
    preset = "quick"                 # training / data preset of every victim
    seeds = [0]
    datasets = ["cifar10"]
    attacks = ["badnets", "blended", "wanet", "badloss-cifar10"]
    defenses = ["ultraclean", "badloss"]

    [set]                            # settings of the preset (like --set key=value)
    epochs = 9

    [defense_set.sampdetox]          # settings of one defense's own config
    diffusion = "weights/cifar10-ddpm"

    [[grid]]                         # optional sub-grids; each overrides the keys above
    datasets = ["gtsrb"]
    attacks = ["badloss-gtsrb"]

Every item of ``attacks`` is what ``--attack`` / ``--suite`` accept: an attack spec
(``badnets``, ``badnets:ratio=0.05``), several at once in one training set
(``badnets,blended``), a named suite (``badloss-cifar10``), or ``clean`` for no attack.
The undefended victim (defense ``none``) is always part of the grid.

A *cell* is one (dataset, attacks, defense, seed) with its presets and settings; a
*group* is the cells that share one victim (everything but the defense).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Any

from detox.errors import ConfigError

NO_ATTACK = "clean"
NO_DEFENSE = "none"

#: keys of a grid (top level or ``[[grid]]``) -> what they hold
GRID_KEYS: dict[str, str] = {
    "datasets": "list of dataset names or paths",
    "attacks": "list of attack specs / suites / 'clean'",
    "defenses": "list of defense names (the undefended victim is always included)",
    "seeds": "list of integer seeds",
    "preset": "preset of data and training (smoke | quick | paper)",
    "defense_preset": "preset of the defenses' own settings (default: preset)",
    "set": "table of data / training / experiment settings",
    "defense_set": "table: defense name -> table of that defense's settings",
}
TOP_KEYS = {"name": "name of the bench (used in the report)", "grid": "list of sub-grids"}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One entry of the grid; ``id`` names its result file."""

    dataset: str
    attack: str
    defense: str
    seed: int
    preset: str
    defense_preset: str
    overrides: tuple[tuple[str, Any], ...] = ()
    defense_overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def group(self) -> Group:
        return Group(self.dataset, self.attack, self.seed, self.preset, self.overrides)

    @property
    def id(self) -> str:
        extra = (self.defense_preset, self.defense_overrides)
        tag = "" if extra == (self.preset, ()) else "__" + _short_hash(extra)
        return f"{self.group.id}__{_slug(self.defense)}{tag}"


@dataclasses.dataclass(frozen=True)
class Group:
    """The cells that share one victim."""

    dataset: str
    attack: str
    seed: int
    preset: str
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def id(self) -> str:
        tag = f"__{_short_hash(self.overrides)}" if self.overrides else ""
        return f"{_slug(self.dataset)}__{_slug(self.attack)}__{self.preset}__s{self.seed}{tag}"

    @property
    def attack_value(self) -> str | None:
        return None if self.attack == NO_ATTACK else self.attack


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-." else "-" for c in str(text).lower())
    return keep.strip("-")[:60] or "x"


def _short_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


@dataclasses.dataclass
class BenchConfig:
    """A parsed, validated bench file."""

    name: str
    grids: list[dict[str, Any]]
    source: str = ""

    def cells(self) -> list[Cell]:
        """Every cell of every grid, in file order, without duplicates."""
        out: list[Cell] = []
        seen: set[str] = set()
        for g in self.grids:
            over = _freeze(g.get("set", {}))
            dsets = g.get("defense_set", {})
            for dataset in g["datasets"]:
                for attack in g["attacks"]:
                    for seed in g["seeds"]:
                        for defense in [NO_DEFENSE, *g["defenses"]]:
                            cell = Cell(
                                dataset=dataset,
                                attack=attack,
                                defense=defense,
                                seed=int(seed),
                                preset=g["preset"],
                                # the undefended victim has no defense settings
                                defense_preset=g["preset"]
                                if defense == NO_DEFENSE
                                else g.get("defense_preset") or g["preset"],
                                overrides=over,
                                defense_overrides=_freeze(dsets.get(defense, {})),
                            )
                            if cell.id not in seen:
                                seen.add(cell.id)
                                out.append(cell)
        return out

    def groups(self) -> list[Group]:
        out: dict[str, Group] = {}
        for c in self.cells():
            out.setdefault(c.group.id, c.group)
        return list(out.values())

    def defenses(self) -> list[str]:
        names: list[str] = [NO_DEFENSE]
        for g in self.grids:
            names += [d for d in g["defenses"] if d not in names]
        return names

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "grids": self.grids, "source": self.source}


def _freeze(d: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((str(k), v) for k, v in d.items()))


def read_bench_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw table of a ``.toml``, ``.yaml`` / ``.yml`` or ``.json`` bench file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"bench config {str(p)!r}: no such file")
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(
                f"bench config {str(p)!r}: expected a .toml, .yaml, .yml or .json file"
            )
    except ConfigError:
        raise
    except Exception as e:  # parse errors of the three formats
        raise ConfigError(f"bench config {str(p)!r}: cannot parse: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"bench config {str(p)!r}: expected a table of settings at top level")
    return data


def load_bench_config(path_or_data: str | os.PathLike | dict[str, Any]) -> BenchConfig:
    """Parse and validate a bench file (or an already-read table)."""
    if isinstance(path_or_data, dict):
        data, source = path_or_data, "<dict>"
    else:
        data, source = read_bench_file(path_or_data), str(path_or_data)
    return parse_bench(data, source)


def parse_bench(data: dict[str, Any], source: str = "<dict>") -> BenchConfig:
    where = f"bench config {source!r}"
    unknown = set(data) - set(GRID_KEYS) - set(TOP_KEYS)
    if unknown:
        valid = ", ".join(sorted(set(GRID_KEYS) | set(TOP_KEYS)))
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; valid: {valid}")
    base = {k: v for k, v in data.items() if k in GRID_KEYS}
    subs = data.get("grid", [])
    if not isinstance(subs, list) or not all(isinstance(s, dict) for s in subs):
        raise ConfigError(f"{where}: 'grid' must be a list of tables ([[grid]] in TOML)")
    grids = []
    for i, sub in enumerate(subs or [{}]):
        label = f"{where}, grid {i + 1}" if subs else where
        bad = set(sub) - set(GRID_KEYS)
        if bad:
            raise ConfigError(
                f"{label}: unknown key(s) {', '.join(sorted(bad))}; valid: {', '.join(GRID_KEYS)}"
            )
        grids.append(_validate_grid({**base, **sub}, label))
    name = data.get("name") or (Path(source).stem if source != "<dict>" else "bench")
    if not isinstance(name, str):
        raise ConfigError(f"{where}: 'name' must be a string")
    return BenchConfig(name=name, grids=grids, source=source)


def _str_list(g: dict[str, Any], key: str, label: str, default: list | None = None) -> list:
    v = g.get(key, default)
    if v is None:
        raise ConfigError(f"{label}: '{key}' is required ({GRID_KEYS[key]})")
    if isinstance(v, str | int):
        v = [v]
    if not isinstance(v, list) or (key != "defenses" and not v):
        raise ConfigError(f"{label}: '{key}' must be a non-empty list ({GRID_KEYS[key]})")
    return v


def _validate_grid(g: dict[str, Any], label: str) -> dict[str, Any]:
    from detox.attacks import parse_attacks
    from detox.config import PRESET_NAMES
    from detox.data.registry import DATASETS
    from detox.pipeline import defense_names

    out: dict[str, Any] = {}
    datasets = _str_list(g, "datasets", label)
    for d in datasets:
        if not isinstance(d, str) or not (d.lower() in DATASETS or Path(d).exists()):
            raise ConfigError(
                f"{label}: dataset {d!r} is neither a registered dataset "
                f"({', '.join(DATASETS.names())}) nor an existing path"
            )
    out["datasets"] = [d.lower() if d.lower() in DATASETS else d for d in datasets]
    attacks = _str_list(g, "attacks", label)
    for a in attacks:
        if not isinstance(a, str):
            raise ConfigError(f"{label}: attack {a!r} must be a string")
        if a != NO_ATTACK:
            try:
                parse_attacks(a)
            except ConfigError as e:
                raise ConfigError(f"{label}: attack {a!r}: {e}") from e
    out["attacks"] = list(attacks)
    valid_def = [NO_DEFENSE, *defense_names()]
    defenses = _str_list(g, "defenses", label, default=[])
    for d in defenses:
        if not isinstance(d, str) or d.lower() not in valid_def:
            raise ConfigError(f"{label}: unknown defense {d!r}; valid: {', '.join(valid_def)}")
    out["defenses"] = [d.lower() for d in defenses if d.lower() != NO_DEFENSE]
    seeds = _str_list(g, "seeds", label, default=[0])
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"{label}: 'seeds' must be non-negative integers, got {seeds!r}")
    out["seeds"] = [int(s) for s in seeds]
    out["preset"] = g.get("preset", "quick")
    if out["preset"] not in PRESET_NAMES:
        raise ConfigError(
            f"{label}: preset {out['preset']!r}; expected one of {', '.join(PRESET_NAMES)}"
        )
    # a defense preset may also be one of a defense's own (sampdetox: `code`)
    out["defense_preset"] = dp = g.get("defense_preset")
    if dp is not None:
        if not isinstance(dp, str):
            raise ConfigError(f"{label}: defense_preset must be a string, got {dp!r}")
        for d in out["defenses"]:
            _check_defense_settings(d, {}, dp, label)
    over = g.get("set", {})
    if not isinstance(over, dict):
        raise ConfigError(f"{label}: 'set' must be a table of settings")
    _check_overrides(over, out["preset"], label)
    out["set"] = dict(over)
    dset = g.get("defense_set", {})
    if not isinstance(dset, dict) or not all(isinstance(v, dict) for v in dset.values()):
        raise ConfigError(f"{label}: 'defense_set' must map defense names to tables")
    for d, settings in dset.items():
        if d not in out["defenses"]:
            raise ConfigError(f"{label}: defense_set names {d!r}, which is not in 'defenses'")
        _check_defense_settings(d, settings, out["defense_preset"] or out["preset"], label)
    out["defense_set"] = {d: dict(s) for d, s in dset.items()}
    return out


def _check_overrides(over: dict[str, Any], preset: str, label: str) -> None:
    from detox.pipeline import resolve_configs

    try:
        resolve_configs(preset, "cifar10", 0, over)
    except ConfigError as e:
        raise ConfigError(f"{label}: [set]: {e}") from e


def _check_defense_settings(name: str, settings: dict, preset: str, label: str) -> None:
    from detox.config import make_config
    from detox.pipeline import defense_kind

    try:
        make_config(
            defense_kind(name).methods().get(name).Config, preset, **_without_weights(settings)
        )
    except ConfigError as e:
        where = f"[defense_set.{name}]" if settings else f"defense {name!r}"
        raise ConfigError(f"{label}: {where}: {e}") from e


def _without_weights(settings: dict) -> dict:
    """A defense's settings minus a weights path: it is checked when the cell runs."""
    return {k: v for k, v in settings.items() if k != "diffusion"}
