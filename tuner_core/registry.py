"""A registry of named plugin objects, filled through a ``register`` callback hook."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Generic, TypeVar

from tuner_core.errors import ConfigError, PluginError

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects of one kind (architectures, networks, memory strategies) keyed by their ``name``.

    Besides its ``name`` an object may list ``aliases`` (other names a user may type for it).
    Registering a name twice raises :class:`~tuner_core.errors.PluginError` naming both plugins.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._owner: dict[str, str] = {}

    def add(self, item: T, plugin: str) -> None:
        """Add ``item``, registered by the plugin called ``plugin``."""
        name = getattr(item, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {self.kind} without a string 'name': {item!r}")
        for key in (name, *getattr(item, "aliases", ())):
            if key in self._owner:
                raise PluginError(
                    f"{self.kind} name {key!r} is registered twice: by plugin {self._owner[key]!r} "
                    f"and by plugin {plugin!r}; uninstall one of them or restrict loading with TUNER_LOAD_PLUGINS"
                )
            self._owner[key] = plugin
        self._items[name] = item
        for alias in getattr(item, "aliases", ()):
            self._aliases[alias] = name

    def get(self, name: str) -> T:
        """The object registered as ``name`` (or under that alias); a clear error lists the choices."""
        key = self._aliases.get(name, name)
        if key in self._items:
            return self._items[key]
        known = sorted(self._items)
        hint = difflib.get_close_matches(name, [*known, *self._aliases], n=1)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        choices = ", ".join(known) if known else "none (is the plugin installed? see `tuner plugins`)"
        raise ConfigError(f"unknown {self.kind} {name!r}.{did_you_mean} Available: {choices}.")

    def owner(self, name: str) -> str:
        """The plugin that registered ``name``."""
        return self._owner[self._aliases.get(name, name)]

    def names(self) -> list[str]:
        """The registered names (aliases excluded), sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[T]:
        return iter(self._items[name] for name in self.names())

    def __len__(self) -> int:
        return len(self._items)
