"""Name -> factory registries with explicit registration and close-match suggestions.

A registry entry is a factory plus, optionally, a pydantic model of the factory's
parameters. The config layer validates a ``{name: ..., **params}`` block against that
model, so an unknown parameter is reported with its key path like any other config key.

>>> from deepworks.registry import Registry
>>> colours = Registry("colour")
>>> @colours.register("red")
... def red():
...     return "#f00"
>>> colours.get("red")()
'#f00'
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from deepworks.errors import UnknownNameError

__all__ = ["Registry", "Entry"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    params: type[BaseModel] | None
    description: str
    origin: str = "built-in"  # or where it came from: an import path's module, a package's entry point


class Registry(Generic[F]):
    """A named collection of factories, e.g. ``MODELS`` or ``DATASETS``."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._origin = "built-in"  # what register() records as the origin of the entries it adds

    def register(
        self,
        name: str,
        *,
        params: type[BaseModel] | None = None,
        description: str = "",
        aliases: tuple[str, ...] = (),
    ) -> Callable[[F], F]:
        """Decorator: register ``factory`` under ``name`` (and ``aliases``)."""

        def deco(factory: F) -> F:
            doc = description or (factory.__doc__ or "").strip().split("\n")[0]
            for key in (name, *aliases):
                if key in self._entries:
                    raise ValueError(f"{self.kind} {key!r} is registered twice")
                self._entries[key] = Entry(key, factory, params, doc, self._origin)
            return factory

        return deco

    def entry(self, name: str, where: str | None = None) -> Entry:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.kind, name, self._entries, where) from None

    def get(self, name: str, where: str | None = None) -> Callable[..., Any]:
        return self.entry(name, where).factory

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
