"""``tuner plugins``: what each loaded plugin is, which hooks it implements and what it registered."""

from __future__ import annotations

import attrs

from tuner_core.plugins import Plugins

#: The registries ``tuner plugins`` lists per plugin: the :class:`PluginInfo` field and the label shown.
REGISTRIES = {
    "architectures": "architectures",
    "networks": "networks",
    "memory_strategies": "memory strategies",
}


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


def describe(plugins: Plugins) -> list[PluginInfo]:
    """One entry per registered plugin: its distribution, hooks and what it registered."""
    owned: dict[tuple[str, str], list[str]] = {}  # (plugin, registry) -> names
    for kind in REGISTRIES:
        registry = getattr(plugins, kind)()
        for name in registry.names():
            owned.setdefault((registry.owner(name), kind), []).append(name)
    infos = []
    for name, plugin in plugins.manager.list_name_plugin():
        if plugin is None:  # blocked
            continue
        dist = plugins.distributions.get(name)
        infos.append(
            PluginInfo(
                name=name,
                distribution=dist.metadata["Name"] if dist else None,
                version=dist.version if dist else None,
                hooks=tuple(sorted(caller.name for caller in plugins.manager.get_hookcallers(plugin) or ())),
                architectures=tuple(owned.get((name, "architectures"), ())),
                networks=tuple(owned.get((name, "networks"), ())),
                memory_strategies=tuple(owned.get((name, "memory_strategies"), ())),
            )
        )
    return infos


def _with_aliases(name: str, aliases: tuple[str, ...]) -> str:
    return f"{name} (also {', '.join(aliases)})" if aliases else name


def format_plugins(plugins: Plugins) -> str:
    """One block per plugin: name, distribution and version, hooks, and what it registered."""
    lines: list[str] = []
    for info in describe(plugins):
        origin = f"{info.distribution} {info.version}" if info.distribution else "built in"
        lines.append(f"{info.name}  ({origin})")
        lines.append("  hooks: " + (", ".join(info.hooks) or "none"))
        for kind, label in REGISTRIES.items():
            if getattr(info, kind):
                registry = getattr(plugins, kind)()
                shown = [_with_aliases(name, registry.get(name).aliases) for name in getattr(info, kind)]
                lines.append(f"  {label}: " + ", ".join(shown))
    for failure in plugins.failures:
        lines.append(f"{failure.entry_point}  ({failure.distribution})  FAILED TO LOAD: {failure.error}")
    for plugin_name, hook_name in plugins.unknown_hooks:
        lines.append(f"warning: plugin {plugin_name!r} implements unknown hook {hook_name!r}")
    return "\n".join(lines)
