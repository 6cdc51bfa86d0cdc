"""Text of ``tuner plugins``."""

from __future__ import annotations

from tuner_core.plugins import Plugins


def format_plugins(plugins: Plugins) -> str:
    """One block per plugin: name, distribution and version, hooks, and what it registered."""
    lines: list[str] = []
    for info in plugins.describe():
        origin = f"{info.distribution} {info.version}" if info.distribution else "built in"
        lines.append(f"{info.name}  ({origin})")
        lines.append("  hooks: " + (", ".join(info.hooks) or "none"))
        for label, names in (
            ("architectures", info.architectures),
            ("networks", info.networks),
            ("memory strategies", info.memory_strategies),
        ):
            if names:
                lines.append(f"  {label}: " + ", ".join(names))
    for failure in plugins.failures:
        lines.append(f"{failure.entry_point}  ({failure.distribution})  FAILED TO LOAD: {failure.error}")
    for plugin_name, hook_name in plugins.unknown_hooks:
        lines.append(f"warning: plugin {plugin_name!r} implements unknown hook {hook_name!r}")
    return "\n".join(lines)
