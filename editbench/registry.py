"""One generic registry for editors, datasets and model presets.

Names are registered with a decorator, or declared in an entry-point group whose value
is the module (imported only when the name is first asked for) or the object itself.
Built-in editors are declared in ``pyproject.toml`` exactly like third-party ones, so the
core never imports ``editors/`` by name. Unknown names fail with a "did you mean".
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from editbench.errors import EditbenchError, UnknownNameError, did_you_mean

__all__ = ["DATASETS", "EDITORS", "Registry", "UnknownNameError", "did_you_mean",
           "register_dataset", "register_editor"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object, filled by decorators and (lazily) by an entry-point group."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._lazy: dict[str, Callable[[], object]] | None = None

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            existing = self._items.get(name)
            if existing is not None and existing is not obj:
                raise EditbenchError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        self.register(name)(obj)

    def _entry_points(self) -> dict[str, Callable[[], object]]:
        if self._lazy is None:
            self._lazy = {}
            if self.entry_point_group:
                for ep in entry_points(group=self.entry_point_group):
                    self._lazy.setdefault(ep.name, ep.load)
        return self._lazy

    def names(self) -> list[str]:
        return sorted(set(self._items) | set(self._entry_points()))

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        loader = self._entry_points().get(name)
        if loader is None:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self.names())} "
                f"(known: {', '.join(self.names()) or 'none'})"
            )
        try:
            loaded = loader()
        except ImportError as exc:
            raise EditbenchError(f"{self.kind} {name!r} could not be imported: {exc}") from exc
        if name not in self._items:
            # The entry point named the object itself rather than a self-registering module.
            if isinstance(loaded, type(importlib)):
                raise EditbenchError(
                    f"{self.kind} {name!r}: module {loaded.__name__} did not register {name!r}"
                )
            self._items[name] = loaded  # type: ignore[assignment]
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        return name in self._items or name in self._entry_points()


EDITORS: Registry[type] = Registry("editor", "editbench.editors")
DATASETS: Registry[Callable] = Registry("dataset", "editbench.datasets")


def register_editor(name: str) -> Callable[[type], type]:
    """Class decorator: ``@register_editor("locft_bf")`` on a ``BaseEditor`` subclass."""

    def decorator(cls: type) -> type:
        cls.name = name
        return EDITORS.register(name)(cls)

    return decorator


def register_dataset(name: str) -> Callable[[Callable], Callable]:
    return DATASETS.register(name)
