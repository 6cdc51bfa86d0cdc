"""Build a plugin manager: the core's own hooks, entry-point plugins and any objects the caller passes.

Nothing is created at import time. An embedding program calls :func:`make_plugin_manager` with exactly
the plugins it wants and keeps the returned :class:`Plugins` for as long as it needs it.
"""

from __future__ import annotations

import difflib
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


@attrs.frozen
class PluginInfo:
    """What ``tuner plugins`` shows for one registered plugin."""

    name: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]
    architectures: tuple[str, ...]
    networks: tuple[str, ...]
    memory_strategies: tuple[str, ...]


def _env_only() -> list[str] | None:
    raw = os.environ.get(ENV_ONLY)
    if raw is None:
        return None
    return [part.strip() for part in raw.split(",") if part.strip()]


def _env_strict() -> bool:
    return os.environ.get(ENV_STRICT, "").strip().lower() in {"1", "true", "yes", "on"}


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-")


def make_plugin_manager(
    *,
    entry_points: bool = True,
    only: Sequence[str] | None = None,
    strict: bool | None = None,
    plugins: Iterable[Any] | Mapping[str, Any] = (),
) -> Plugins:
    """Create a plugin manager.

    :param entry_points: load plugins declared in the ``tuner`` entry-point group of installed packages.
    :param only: load only entry points whose name or distribution is listed (default: ``$TUNER_LOAD_PLUGINS``,
        a comma-separated list; unset means all).
    :param strict: raise on a plugin that fails to import or implements an unknown hook instead of
        warning (default: ``$TUNER_STRICT_PLUGINS``).
    :param plugins: extra plugin objects (modules, classes or instances with hook functions) to register,
        as a sequence or as a ``{name: plugin}`` mapping.
    :raises PluginError: in strict mode, on the first plugin problem.
    """
    strict = _env_strict() if strict is None else strict
    only = _env_only() if only is None else list(only)
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        manager.register(importlib.import_module(module_name), name=module_name)

    failures: list[LoadFailure] = []
    dists: dict[str, metadata.Distribution] = {}
    if entry_points:
        _load_entry_points(manager, only, strict, failures, dists)

    items = plugins.items() if isinstance(plugins, Mapping) else ((None, p) for p in plugins)
    for name, plugin in items:
        manager.register(plugin, name=name)

    unknown = _check_pending(manager, strict)
    recipe = {"entry_points": entry_points, "only": only, "strict": strict, "plugins": plugins}
    return Plugins(
        manager, failures=failures, distributions=dists, unknown_hooks=unknown, strict=strict, recipe=recipe
    )


def _load_entry_points(
    manager: pluggy.PluginManager,
    only: list[str] | None,
    strict: bool,
    failures: list[LoadFailure],
    dists: dict[str, metadata.Distribution],
) -> None:
    wanted = None if only is None else {_normalise(n) for n in only}
    matched: set[str] = set()
    installed: list[str] = []
    seen: set[tuple[str, str]] = set()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else "?"
        if (ep.name, ep.value) in seen:  # one package found twice on sys.path
            continue
        seen.add((ep.name, ep.value))
        installed.append(f"{ep.name} ({dist_name})")
        names = {_normalise(ep.name), _normalise(dist_name)}
        if wanted is not None and not names & wanted:
            continue
        matched |= names & (wanted or set())
        if manager.get_plugin(ep.name) is not None or manager.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
            manager.register(plugin, name=ep.name)
        except Exception as exc:  # a broken third-party plugin must not take the others down
            message = f"{type(exc).__name__}: {exc}"
            if strict:
                raise PluginError(
                    f"plugin {ep.name!r} from distribution {dist_name!r} failed to load: {message}"
                ) from exc
            failures.append(LoadFailure(ep.name, dist_name, message))
            log.warning(
                "plugin %r from distribution %r failed to load and is skipped (%s). "
                "Set %s=1 to make this an error.",
                ep.name,
                dist_name,
                message,
                ENV_STRICT,
            )
            continue
        if dist is not None:
            dists[ep.name] = dist
    for name in sorted((wanted or set()) - matched):
        hint = difflib.get_close_matches(name, [i.split(" ")[0] for i in installed], n=1)
        log.warning(
            "%s: no installed plugin is called %r%s; installed: %s",
            ENV_ONLY,
            name,
            f" (did you mean {hint[0]!r}?)" if hint else "",
            ", ".join(installed) or "none",
        )


def _check_pending(manager: pluggy.PluginManager, strict: bool) -> list[tuple[str, str]]:
    """Find hook implementations whose name matches no hook spec (usually a typo)."""
    spec_names = [name for name in dir(hookspecs) if name.startswith("tuner_")]
    unknown: list[tuple[str, str]] = []
    for name, caller in vars(manager.hook).items():
        if not isinstance(caller, pluggy.HookCaller) or caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            unknown.append((impl.plugin_name, name))
    for plugin_name, hook_name in unknown:
        hint = difflib.get_close_matches(hook_name, spec_names, n=1)
        message = f"plugin {plugin_name!r} implements unknown hook {hook_name!r}" + (
            f" (did you mean {hint[0]!r}?)" if hint else ""
        )
        if strict:
            raise PluginError(message)
        log.warning("%s; it will never be called", message)
    return unknown


def _remake(recipe: Mapping[str, Any]) -> Plugins:
    return make_plugin_manager(**recipe)


class Plugins:
    """The loaded plugins: their registries, the hook relay, and what ``tuner plugins`` shows."""

    def __init__(
        self,
        manager: pluggy.PluginManager,
        *,
        failures: Sequence[LoadFailure] = (),
        distributions: Mapping[str, metadata.Distribution] | None = None,
        unknown_hooks: Sequence[tuple[str, str]] = (),
        strict: bool = False,
        recipe: Mapping[str, Any] | None = None,
    ) -> None:
        self.manager = manager
        self.failures = list(failures)
        self.unknown_hooks = list(unknown_hooks)
        self.strict = strict
        self._recipe = recipe
        self._distributions = dict(distributions or {})
        self._registries: dict[str, Registry[Any]] = {}

    # -- registries --------------------------------------------------------------------------------

    def _registry(self, hook_name: str, kind: str) -> Registry[Any]:
        if hook_name not in self._registries:
            registry: Registry[Any] = Registry(kind)
            for impl in getattr(self.manager.hook, hook_name).get_hookimpls():

                def register(item: Any, _plugin: str = impl.plugin_name) -> None:
                    registry.add(item, _plugin)

                try:
                    impl.function(**({"register": register} if "register" in impl.argnames else {}))
                except PluginError:
                    raise
                except Exception as exc:
                    if self.strict:
                        raise PluginError(
                            f"plugin {impl.plugin_name!r} failed in {hook_name}: {exc}"
                        ) from exc
                    log.warning("plugin %r failed in %s and is skipped: %s", impl.plugin_name, hook_name, exc)
            self._registries[hook_name] = registry
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
        return (_remake, (dict(self._recipe),))

    # -- hooks -------------------------------------------------------------------------------------

    @property
    def hook(self) -> Any:
        """The hook relay: ``plugins.hook.tuner_encode_text(architecture=..., captions=..., ...)``.

        Every hook of :mod:`tuner_core.hookspecs` is called through it, by keyword; a per-call hook
        returns the first answer that is not ``None`` (the architecture answers last).
        """
        return self.manager.hook

    # -- introspection -----------------------------------------------------------------------------

    def describe(self) -> list[PluginInfo]:
        """One entry per registered plugin: its distribution, hooks and what it registered."""
        owners: dict[str, dict[str, list[str]]] = {}
        for kind, registry in (
            ("architectures", self.architectures()),
            ("networks", self.networks()),
            ("memory_strategies", self.memory_strategies()),
        ):
            for name in registry.names():
                owners.setdefault(registry.owner(name), {}).setdefault(kind, []).append(name)
        infos = []
        for name, plugin in self.manager.list_name_plugin():
            if plugin is None:
                continue
            dist = self._distributions.get(name)
            hooks = sorted(caller.name for caller in self.manager.get_hookcallers(plugin) or ())
            own = owners.get(name, {})
            infos.append(
                PluginInfo(
                    name=name,
                    distribution=dist.metadata["Name"] if dist else None,
                    version=dist.version if dist else None,
                    hooks=tuple(hooks),
                    architectures=tuple(own.get("architectures", ())),
                    networks=tuple(own.get("networks", ())),
                    memory_strategies=tuple(own.get("memory_strategies", ())),
                )
            )
        return infos
