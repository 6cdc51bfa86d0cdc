"""Build a plugin manager: the core's own hooks, entry-point plugins and any objects the caller passes.

Nothing is created at import time: a program calls :func:`make_plugin_manager` and keeps the :class:`Plugins`.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from tuner_core import hookspecs
from tuner_core.errors import PluginError
from tuner_core.registry import Registry

if TYPE_CHECKING:
    from tuner_core.architecture import Architecture
    from tuner_core.memory.strategy import MemoryStrategy
    from tuner_core.network import NetworkType

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "tuner"
#: The core's own hook implementations; registered like any plugin, and always last in line.
BUILTIN_PLUGINS = ("tuner_core.defaults",)
ENV_ONLY = "TUNER_LOAD_PLUGINS"
ENV_STRICT = "TUNER_STRICT_PLUGINS"


@attrs.frozen
class LoadFailure:
    """An entry point that could not be imported."""

    entry_point: str
    distribution: str
    error: str


def make_plugin_manager(
    *,
    entry_points: bool = True,
    only: Sequence[str] | None = None,
    strict: bool | None = None,
    plugins: Iterable[Any] | Mapping[str, Any] = (),
) -> Plugins:
    """Create a plugin manager.

    :param entry_points: load the plugins of the ``tuner`` entry-point group of installed packages.
    :param only: load only the entry points whose name or distribution is listed (default:
        ``$TUNER_LOAD_PLUGINS``, comma-separated; unset means all).
    :param strict: raise, instead of warning, on a plugin that fails to import or implements an unknown hook
        (default: ``$TUNER_STRICT_PLUGINS``).
    :param plugins: extra plugin objects (modules, classes, instances), as a sequence or ``{name: plugin}``.
    :raises PluginError: in strict mode, on the first plugin problem.
    """
    if strict is None:
        strict = os.environ.get(ENV_STRICT, "").strip().lower() in {"1", "true", "yes", "on"}
    if only is None and ENV_ONLY in os.environ:
        only = [part.strip() for part in os.environ[ENV_ONLY].split(",") if part.strip()]
    only = None if only is None else list(only)
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        manager.register(importlib.import_module(module_name), name=module_name)
    # The arguments, resolved against the environment, rebuild the same plugins in a spawned worker.
    recipe = {"entry_points": entry_points, "only": only, "strict": strict, "plugins": plugins}
    result = Plugins(manager, strict=strict, recipe=recipe)
    if entry_points:
        _load_entry_points(result, only)
    items = plugins.items() if isinstance(plugins, Mapping) else ((None, p) for p in plugins)
    for name, plugin in items:
        manager.register(plugin, name=name)
    result.unknown_hooks = _unknown_hooks(manager, strict)
    return result


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    hint = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-")


def _load_entry_points(plugins: Plugins, only: list[str] | None) -> None:
    """Register the ``tuner`` entry points ``only`` selects; one that fails to import is skipped, reported."""
    wanted = None if only is None else {_normalise(n) for n in only}
    matched: set[str] = set()
    found: dict[tuple[str, str], metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault((ep.name, ep.value), ep)  # one package found twice on sys.path: keep the first
    installed = [(ep, ep.dist.metadata["Name"] if ep.dist is not None else "?") for ep in found.values()]
    for ep, dist_name in installed:
        names = {_normalise(ep.name), _normalise(dist_name)}
        if wanted is not None and not names & wanted:
            continue
        matched |= names & (wanted or set())
        if plugins.manager.get_plugin(ep.name) is not None or plugins.manager.is_blocked(ep.name):
            continue
        try:
            plugins.manager.register(ep.load(), name=ep.name)
        except Exception as exc:  # a broken third-party plugin must not take the others down
            problem = f"plugin {ep.name!r} from distribution {dist_name!r} failed to load"
            error = f"{type(exc).__name__}: {exc}"
            if plugins.strict:
                raise PluginError(f"{problem}: {error}") from exc
            plugins.failures.append(LoadFailure(ep.name, dist_name, error))
            log.warning("%s and is skipped (%s). Set %s=1 to make this an error.", problem, error, ENV_STRICT)
            continue
        if ep.dist is not None:
            plugins.distributions[ep.name] = ep.dist
    for name in sorted((wanted or set()) - matched):
        hint = _did_you_mean(name, (ep.name for ep, _ in installed))
        listing = ", ".join(f"{ep.name} ({dist})" for ep, dist in installed) or "none"
        log.warning("%s: no installed plugin is called %r%s; installed: %s", ENV_ONLY, name, hint, listing)


def _unknown_hooks(manager: pluggy.PluginManager, strict: bool) -> list[tuple[str, str]]:
    """Report the ``(plugin, hook)`` implementations whose name matches no hook spec (usually a typo)."""
    unknown = [
        (impl.plugin_name, name)
        for name, caller in vars(manager.hook).items()
        if isinstance(caller, pluggy.HookCaller) and not caller.has_spec()
        for impl in caller.get_hookimpls()
    ]
    specs = [name for name in vars(hookspecs) if name.startswith("tuner_")]
    for plugin_name, hook_name in unknown:
        hint = _did_you_mean(hook_name, specs)
        message = f"plugin {plugin_name!r} implements unknown hook {hook_name!r}{hint}"
        if strict:
            raise PluginError(message)
        log.warning("%s; it will never be called", message)
    return unknown


@attrs.define(eq=False)
class Plugins:
    """The loaded plugins: the hook relay, the registries they fill, and what went wrong loading them.

    Make one with :func:`make_plugin_manager`. Every hook of :mod:`tuner_core.hookspecs` is called through
    :attr:`hook` by keyword; a per-call hook returns the first answer that is not ``None``.
    """

    manager: pluggy.PluginManager
    failures: list[LoadFailure] = attrs.field(factory=list, converter=list, kw_only=True)
    #: The distribution of each plugin that came from an entry point, by plugin name.
    distributions: dict[str, metadata.Distribution] = attrs.field(factory=dict, converter=dict, kw_only=True)
    #: ``(plugin, hook)`` for each implementation whose name matches no hook spec.
    unknown_hooks: list[tuple[str, str]] = attrs.field(factory=list, converter=list, kw_only=True)
    strict: bool = attrs.field(default=False, kw_only=True)
    _recipe: Mapping[str, Any] | None = attrs.field(default=None, kw_only=True, repr=False)
    _registries: dict[str, Registry[Any]] = attrs.field(factory=dict, init=False, repr=False)

    @property
    def hook(self) -> Any:
        """The hook relay: ``plugins.hook.tuner_encode_text(architecture=..., captions=..., ...)``."""
        return self.manager.hook

    def _registry(self, hook_name: str, kind: str) -> Registry[Any]:
        # Filled on first use, so registration code runs only in commands that need it.
        if hook_name not in self._registries:
            caller = getattr(self.manager.hook, hook_name)
            self._registries[hook_name] = Registry.collect(caller, kind, strict=self.strict)
        return self._registries[hook_name]

    def architectures(self) -> Registry[Architecture]:
        """All registered architectures."""
        return self._registry("tuner_register_architectures", "architecture")

    def architecture(self, name: str) -> Architecture:
        """The architecture called ``name``; a :class:`~tuner_core.errors.ConfigError` lists the choices."""
        return self.architectures().get(name)

    def networks(self) -> Registry[NetworkType]:
        """All registered network types."""
        return self._registry("tuner_register_networks", "network type")

    def network(self, name: str) -> NetworkType:
        """The network type called ``name`` (or registered under that alias)."""
        return self.networks().get(name)

    def memory_strategies(self) -> Registry[MemoryStrategy]:
        """All registered memory strategies."""
        return self._registry("tuner_register_memory_strategies", "memory strategy")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as the call that made it: a spawned data-loader worker loads the same plugins again."""
        if self._recipe is None:
            raise TypeError("only a Plugins made by make_plugin_manager() can be pickled")
        return (functools.partial(make_plugin_manager, **self._recipe), ())
