"""A tiny name -> factory registry, used for datasets, models, attacks and defenses.

Adding a method is one new module that calls ``REGISTRY.register("name")``; no core file
changes. Unknown names raise a :class:`~detox.errors.ConfigError` that lists the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from detox.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps lower-case names to factories (classes or functions)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._canonical: list[str] = []

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self._canonical.append(name.lower())
            for key in (name, *aliases):
                key = key.lower()
                if key in self._items and self._items[key] is not obj:
                    raise ConfigError(f"{self.kind} {key!r} is registered twice")
                self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        key = name.lower()
        if key not in self._items:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}"
            )
        return self._items[key]

    def names(self) -> list[str]:
        """Canonical names (aliases are accepted by :meth:`get` but not listed)."""
        return sorted(set(self._canonical))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
