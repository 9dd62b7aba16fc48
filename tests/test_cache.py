"""The purified-image cache cannot go stale: its key follows the source of every module the
purifier's code imports (detox's and a plugin package's), and the classifier for a
purifier that uses it. Each test counts what was recomputed and what came from the cache.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from detox.defenses.purifiers import build_purifier, purify_all
from detox.defenses.purifiers.base import Purifier, purified_cache_key
from detox.diffusion import new_diffusion_model
from detox.errors import ConfigError
from detox.utils import fingerprint as fp
from detox.utils.fingerprint import code_fingerprint, module_closure, state_fingerprint

PKG = "detox_cache_probe"

PURIFIER_SRC = """
import dataclasses

from detox.defenses.purifiers.base import Purifier

from .helper import shade


@dataclasses.dataclass
class ProbeConfig:
    strength: float = 1.0
    batch_size: int = 4
    seed: int = 0


class Probe(Purifier):
    name = "probe"
    Config = ProbeConfig

    def _purify_batch(self, x, seed, start_index):
        from . import lazy  # imported inside a function, relatively

        self.computed = getattr(self, "computed", 0) + len(x)
        return (shade(x) * self.config.strength + lazy.offset()).clamp(0, 1)
"""


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """A plugin package on disk (``purifier.py`` imports ``helper.py`` at the top and
    ``lazy.py`` inside a method; ``unrelated.py`` is imported by nobody). Yields a function
    that writes a module and a function that (re)imports the purifier module."""
    root = tmp_path / "plugins"
    pkg = root / PKG
    pkg.mkdir(parents=True)

    def write(name: str, text: str) -> None:
        (pkg / f"{name}.py").write_text(textwrap.dedent(text))

    write("__init__", "")
    write("helper", "SCALE = 0.5\n\n\ndef shade(x):\n    return x * SCALE\n")
    write("lazy", "def offset():\n    return 0.0\n")
    write("unrelated", "VALUE = 1\n")
    write("purifier", PURIFIER_SRC)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # edits within a second reload
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("DETOX_CACHE", str(tmp_path / "cache"))

    def load():
        importlib.invalidate_caches()
        for name in [m for m in sys.modules if m == PKG or m.startswith(PKG + ".")]:
            del sys.modules[name]
        return importlib.import_module(f"{PKG}.purifier")

    yield write, load
    for name in [m for m in sys.modules if m == PKG or m.startswith(PKG + ".")]:
        del sys.modules[name]


def _run(p: Purifier, x: torch.Tensor, **kw) -> torch.Tensor:
    p.computed = 0
    p.cached_images = 0
    return purify_all(p, x, cache=True, device="cpu", progress=False, **kw)


def test_editing_a_helper_module_invalidates_the_cache(probe, cifar_test_small):
    write, load = probe
    x = cifar_test_small.x[:8]
    mod = load()
    p = mod.Probe()
    assert set(module_closure(type(p))) >= {
        f"{PKG}.purifier",
        f"{PKG}.helper",
        f"{PKG}.lazy",
        "detox.defenses.purifiers.base",
        "detox.utils.seed",
    }
    assert f"{PKG}.unrelated" not in module_closure(type(p))
    key0 = purified_cache_key(p, x)
    a = _run(p, x)
    assert (p.computed, p.cached_images) == (8, 0)  # computed, then stored
    b = _run(p, x)
    assert (p.computed, p.cached_images) == (0, 8) and torch.equal(a, b)  # served
    assert torch.equal(a, (x.float() * 0.5).round().to(torch.uint8))

    # a module nobody imports: same key, still served from the cache
    write("unrelated", "VALUE = 2\n")
    assert purified_cache_key(p, x) == key0
    _run(p, x)
    assert (p.computed, p.cached_images) == (0, 8)

    # edit the helper the purifier imports: the key changes before anything is reloaded,
    # and the reloaded purifier recomputes (new values), then is served again
    write("helper", "SCALE = 0.25\n\n\ndef shade(x):\n    return x * SCALE\n")
    key1 = purified_cache_key(p, x)
    assert key1 != key0
    p = load().Probe()
    assert purified_cache_key(p, x) == key1
    c = _run(p, x)
    assert (p.computed, p.cached_images) == (8, 0)
    assert torch.equal(c, (x.float() * 0.25).round().to(torch.uint8)) and not torch.equal(a, c)
    _run(p, x)
    assert (p.computed, p.cached_images) == (0, 8)

    # a module imported inside a method, relatively
    write("lazy", "def offset():\n    return 0.1\n")
    p = load().Probe()
    assert purified_cache_key(p, x) not in (key0, key1)
    d = _run(p, x)
    assert (p.computed, p.cached_images) == (8, 0) and not torch.equal(c, d)

    # settings and seeds still key it; batch_size does not
    q = load().Probe(dataclasses.replace(p.config, strength=0.5))
    _run(q, x)
    assert (q.computed, q.cached_images) == (8, 0)
    q = load().Probe(dataclasses.replace(p.config, batch_size=3))
    _run(q, x)
    assert (q.computed, q.cached_images) == (0, 8)


@pytest.fixture(scope="module")
def tiny_model():
    return new_diffusion_model(
        sample_size=8, block_out_channels=(16, 32), norm_num_groups=8, beta_schedule="cosine"
    )


def _edited(monkeypatch, module: str) -> None:
    """Make :func:`code_fingerprint` read ``module``'s source with one more line, as if the
    file had been edited."""
    target = Path(importlib.import_module(module).__file__).resolve()
    real = fp.read_source

    def read(path: Path) -> bytes:
        src = real(path)
        return src + b"\n# edited\n" if Path(path).resolve() == target else src

    monkeypatch.setattr(fp, "read_source", read)


@pytest.mark.parametrize(
    "module,sampdetox_changes,shrinkpad_changes",
    [
        ("detox.defenses.purifiers.sampdetox", True, False),  # ssim_map, level_map, ...
        ("detox.diffusion.backend", True, False),  # the diffusion backend
        ("detox.defenses.purifiers.base", True, True),  # NoiseStreams, purify_all
        ("detox.utils.seed", True, True),  # derive_seed (the noise streams' seeds)
        ("detox.data.base", True, True),  # to_float / to_uint8
        ("detox.defenses.detectors.ultraclean", False, False),  # not imported by either
    ],
)
def test_detox_module_edits_reach_the_keys_that_depend_on_them(
    monkeypatch, tmp_path, tiny_model, module, sampdetox_changes, shrinkpad_changes
):
    monkeypatch.setenv("DETOX_CACHE", str(tmp_path))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8, generator=g)
    sd = build_purifier("sampdetox", "smoke", model=tiny_model, t1=4, T2=8)
    sp = build_purifier("shrinkpad", "paper", shrink=2)
    _run(sd, x)
    _run(sp, x)
    before = {p.name: purified_cache_key(p, x) for p in (sd, sp)}
    _edited(monkeypatch, module)
    after = {p.name: purified_cache_key(p, x) for p in (sd, sp)}
    assert (after["sampdetox"] != before["sampdetox"]) == sampdetox_changes
    assert (after["shrinkpad"] != before["shrinkpad"]) == shrinkpad_changes
    for p, changes in ((sd, sampdetox_changes), (sp, shrinkpad_changes)):
        _run(p, x)
        assert p.cached_images == (0 if changes else 3), p.name


def test_code_fingerprint_is_deterministic_and_follows_imports():
    from detox.defenses.purifiers import SampDetox

    mods = module_closure(SampDetox)
    # both import forms, the package __init__ named by `from detox.diffusion import ...`,
    # and imports inside functions (load_diffusion, normalize_schedule)
    for m in (
        "detox.defenses.purifiers.sampdetox",
        "detox.defenses.purifiers.base",
        "detox.diffusion",
        "detox.diffusion.backend",
        "detox.errors",
        "detox.utils.fingerprint",
    ):
        assert m in mods, m
    assert all(m.startswith("detox") for m in mods)
    assert list(mods) == sorted(mods)
    assert code_fingerprint(SampDetox) == code_fingerprint("detox.defenses.purifiers.sampdetox")
    assert code_fingerprint(SampDetox) != code_fingerprint("detox.defenses.purifiers.shrinkpad")
    with pytest.raises(ConfigError, match="no source file"):
        code_fingerprint("detox.no_such_module")


class _ModelProbe(Purifier):
    """A purifier whose output depends on the classifier (none ships yet)."""

    name = "model-probe"
    needs_model = True

    @dataclasses.dataclass
    class Config:
        seed: int = 0
        batch_size: int = 8

    def _purify_batch(self, x, seed, start_index):
        self.computed = getattr(self, "computed", 0) + len(x)
        return 1.0 - x


def test_a_purifier_that_uses_the_model_is_keyed_by_it(tmp_path, monkeypatch, cifar_test_small):
    monkeypatch.setenv("DETOX_CACHE", str(tmp_path))
    x = cifar_test_small.x[:6]
    p = _ModelProbe()
    with pytest.raises(ConfigError, match="model_fingerprint"):
        _run(p, x)
    torch.manual_seed(0)
    m1 = torch.nn.Linear(4, 2)
    m2 = torch.nn.Linear(4, 2)
    f1, f2 = state_fingerprint(m1), state_fingerprint(m2)
    assert f1 != f2 and state_fingerprint(m1.state_dict()) == f1
    _run(p, x, model_fingerprint=f1)
    assert (p.computed, p.cached_images) == (6, 0)
    _run(p, x, model_fingerprint=f1)
    assert (p.computed, p.cached_images) == (0, 6)
    _run(p, x, model_fingerprint=f2)  # another victim: recomputed
    assert (p.computed, p.cached_images) == (6, 0)
    m3 = torch.nn.Linear(4, 2)
    m3.load_state_dict(m1.state_dict())  # the same weights in another object: served
    _run(p, x, model_fingerprint=state_fingerprint(m3))
    assert (p.computed, p.cached_images) == (0, 6)
    # a purifier that does not use the model ignores it
    sp = build_purifier("shrinkpad", "paper")
    assert purified_cache_key(sp, x, model_fingerprint=f1) == purified_cache_key(sp, x)
