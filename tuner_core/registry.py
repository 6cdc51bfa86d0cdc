"""A registry of named plugin objects, filled through a ``register`` callback hook."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

import pluggy

from tuner_core.errors import ConfigError, PluginError
from tuner_core.options import did_you_mean

log = logging.getLogger(__name__)
T = TypeVar("T")


class Registry(Generic[T]):
    """Objects of one kind (architectures, networks, memory strategies) keyed by their ``name``.

    Besides its ``name`` an object may list ``aliases`` (other names a user may type for it).
    Registering a name twice raises :class:`~tuner_core.errors.PluginError` naming both plugins.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._names: dict[str, str] = {}  # every name and alias -> the name
        self._owner: dict[str, str] = {}  # name -> the plugin that registered it

    @classmethod
    def collect(cls, caller: pluggy.HookCaller, kind: str, *, strict: bool) -> Registry[Any]:
        """Call each implementation of a ``tuner_register_*`` hook with a ``register`` callback of its own.

        A plugin whose hook raises is skipped with a warning (strict: a :class:`PluginError`); a duplicate
        name is always an error.
        """
        registry: Registry[Any] = cls(kind)
        for impl in caller.get_hookimpls():
            register = functools.partial(registry.add, plugin=impl.plugin_name)
            try:
                impl.function(**({"register": register} if "register" in impl.argnames else {}))
            except PluginError:
                raise
            except Exception as exc:
                if strict:
                    raise PluginError(f"plugin {impl.plugin_name!r} failed in {caller.name}: {exc}") from exc
                log.warning("plugin %r failed in %s and is skipped: %s", impl.plugin_name, caller.name, exc)
        return registry

    def add(self, item: T, plugin: str) -> None:
        """Add ``item``, registered by the plugin called ``plugin``."""
        name = getattr(item, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {self.kind} without a string 'name': {item!r}")
        keys = (name, *getattr(item, "aliases", ()))
        for index, key in enumerate(keys):
            if key in self._names or key in keys[:index]:  # taken, or the item repeats its own name
                first = self._owner[self._names[key]] if key in self._names else plugin
                raise PluginError(
                    f"{self.kind} name {key!r} is registered twice: by plugin {first!r} and by plugin {plugin!r}; "
                    "uninstall one of them or restrict loading with TUNER_LOAD_PLUGINS"
                )
        # Only a complete, valid item goes in, so a plugin that catches the error leaves no half entry.
        self._names.update(dict.fromkeys(keys, name))
        self._items[name] = item
        self._owner[name] = plugin

    def get(self, name: str) -> T:
        """The object registered as ``name`` (or under that alias); a clear error lists the choices."""
        if name in self._names:
            return self._items[self._names[name]]
        hint = did_you_mean(name, list(self._names))
        choices = ", ".join(self.names()) or "none (is the plugin installed? see `tuner plugins`)"
        raise ConfigError(f"unknown {self.kind} {name!r}.{hint} Available: {choices}.")

    def owner(self, name: str) -> str:
        """The plugin that registered ``name`` (or the object with that alias)."""
        return self._owner[self._names[name]]

    def names(self) -> list[str]:
        """The registered names (aliases excluded), sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[T]:
        return iter(self._items[name] for name in self.names())

    def __len__(self) -> int:
        return len(self._items)
