"""Fingerprints that key caches: the code a result depends on, and model weights.

:func:`code_fingerprint` hashes the source text of the modules that define the given
objects and, transitively, of every module they import from the same packages (``detox``
and each object's own top-level package, so a plugin package outside detox is followed
too). Imports are found by parsing each module with :mod:`ast`, anywhere in the file
(inside functions and ``if TYPE_CHECKING`` blocks too):

* ``import a.b.c`` adds ``a.b.c``;
* ``from a.b import c`` adds ``a.b`` and, when ``c`` is a submodule, ``a.b.c``;
* relative imports (``from .x import y``, ``from .. import z``) are resolved against the
  importing module's package.

Parent packages are not added implicitly (``import detox.a.b`` adds ``detox.a.b``, not
``detox/a/__init__.py``): the code a function runs is reached through the names it
imports. Modules are located and read from disk without importing them
(:func:`read_source`), visited in sorted order; the digest covers every module's name and
source bytes plus the installed versions of the third-party distributions these modules
import (torch, kornia, diffusers, ...). It depends on nothing else (no paths, no
timestamps), so it is the same in every process and on every machine with the same code.

:func:`state_fingerprint` hashes a model's parameters and buffers (names, dtypes, shapes,
bytes); :func:`runtime_fingerprint` names what of the machine changes computed bytes.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import sys
import types
from collections.abc import Iterable, Mapping
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import torch

from detox.errors import ConfigError

#: Packages whose imports are always followed.
FOLLOWED = ("detox",)


def read_source(path: Path) -> bytes:
    """The source bytes of one module file (the one place files are read: tests patch it)."""
    return Path(path).read_bytes()


def _module_name(obj: Any) -> str:
    if isinstance(obj, str):
        return obj
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    name = getattr(obj, "__module__", None)
    if not isinstance(name, str):
        name = type(obj).__module__
    return name


def _top_location(top: str) -> tuple[Path, bool] | None:
    """(file or package folder of the top-level module ``top``, is a package)."""
    mod = sys.modules.get(top)
    file = getattr(mod, "__file__", None) if mod is not None else None
    if file is None:
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        if spec.origin and spec.has_location:
            file = spec.origin
        elif spec.submodule_search_locations:  # namespace package
            return Path(next(iter(spec.submodule_search_locations))), True
        else:
            return None
    p = Path(file)
    return (p.parent, True) if p.name == "__init__.py" else (p, False)


def _module_file(name: str) -> tuple[Path, bool] | None:
    """(source file, is a package) of module ``name``, found on disk; None if there is none
    (an attribute rather than a submodule, a compiled extension, a missing module)."""
    top, *rest = name.split(".")
    loc = _top_location(top)
    if loc is None:
        return None
    base, is_pkg = loc
    if not rest:
        f = base / "__init__.py" if is_pkg else base
        return (f, is_pkg) if f.is_file() and f.suffix == ".py" else None
    if not is_pkg:
        return None
    folder = base.joinpath(*rest)
    if (folder / "__init__.py").is_file():
        return folder / "__init__.py", True
    f = folder.with_suffix(".py")
    return (f, False) if f.is_file() else None


def _imports(tree: ast.AST, name: str, is_pkg: bool) -> tuple[set[str], set[str]]:
    """(candidate module names, absolute top-level names) imported anywhere in ``tree``."""
    mods: set[str] = set()
    tops: set[str] = set()
    package = name if is_pkg else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                mods.add(a.name)
                tops.add(a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                if node.level - 1 > len(parts) or not parts:
                    continue  # beyond the top-level package: Python would refuse it too
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
                tops.add(base.split(".")[0])
            mods.add(base)
            mods.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
    return mods, tops


def module_closure(*objs: Any) -> dict[str, Path]:
    """Module name -> source file of every module :func:`code_fingerprint` reads for
    ``objs`` (sorted by name)."""
    files, _ = _closure(objs)
    return dict(sorted(files.items()))


def _closure(objs: Iterable[Any]) -> tuple[dict[str, Path], dict[str, bytes]]:
    roots = [_module_name(o) for o in objs]
    if not roots:
        raise ConfigError("code_fingerprint: name at least one object or module")
    followed = set(FOLLOWED) | {r.split(".")[0] for r in roots}
    files: dict[str, Path] = {}
    sources: dict[str, bytes] = {}
    libs: set[str] = set()
    todo = list(dict.fromkeys(roots))
    while todo:
        name = todo.pop()
        if name in files:
            continue
        found = _module_file(name)
        if found is None:
            if name in roots:
                raise ConfigError(
                    f"code_fingerprint: module {name!r} has no source file to hash "
                    "(define the object in a .py module)"
                )
            continue  # `from pkg import attr`: attr is not a submodule
        path, is_pkg = found
        src = read_source(path)
        files[name], sources[name] = path, src
        try:
            tree = ast.parse(src, filename=str(path))
        except SyntaxError as e:
            raise ConfigError(f"code_fingerprint: cannot parse {path}: {e}") from e
        mods, tops = _imports(tree, name, is_pkg)
        todo.extend(sorted(m for m in mods if m.split(".")[0] in followed and m not in files))
        libs.update(t for t in tops if t and t not in followed)
    versions = {
        f"lib:{t}": _version(t).encode()
        for t in sorted(libs)
        if t not in sys.stdlib_module_names and _version(t)
    }
    return files, {**sources, **versions}


@cache
def _distributions() -> Mapping[str, list[str]]:
    from importlib.metadata import packages_distributions

    return packages_distributions()


@lru_cache(maxsize=256)
def _version(top: str) -> str:
    """``dist==version`` of the installed distribution(s) providing import name ``top``."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in sorted(set(_distributions().get(top, []))):
        try:
            out.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            continue
    return ",".join(out)


def code_fingerprint(*objs: Any) -> str:
    """sha256 (hex) of the source of the modules defining ``objs`` (modules, module names,
    classes, functions or instances) and of every module they import, transitively, from
    ``detox`` and from the objects' own top-level packages; plus the versions of the
    third-party libraries those modules import. See the module docstring."""
    _, items = _closure(objs)
    h = hashlib.sha256(b"detox.code_fingerprint/1")
    for key in sorted(items):
        data = items[key]
        h.update(f"\0{key}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def runtime_fingerprint(device: torch.device | str) -> dict[str, Any]:
    """What of the machine changes a computed result's bytes: the device type, whether
    bf16 autocast is used there, and on the CPU the number of torch threads (reductions
    are split by it). Part of the key of every cache of computed tensors."""
    from detox.utils.device import bf16_supported

    dev = torch.device(device) if isinstance(device, str) else device
    out: dict[str, Any] = {"device": dev.type, "bf16": bool(bf16_supported(dev))}
    if dev.type == "cpu":
        out["threads"] = torch.get_num_threads()
    return out


def state_fingerprint(model: torch.nn.Module | Mapping[str, torch.Tensor]) -> str:
    """sha256 (hex) of a model's state (parameter and buffer names, dtypes, shapes, bytes):
    the ``model_fingerprint`` of a purifier that needs the classifier."""
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    h = hashlib.sha256(b"detox.state_fingerprint/1")
    for k in sorted(state):
        t = state[k]
        if not torch.is_tensor(t):
            raise ConfigError(f"state_fingerprint: entry {k!r} is not a tensor")
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"\0{k}\0{t.dtype}\0{tuple(state[k].shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
