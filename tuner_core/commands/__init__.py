"""The library face of every CLI command: typed functions an embedding program calls directly."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from tuner_core.config.cache_options import CacheLatentsOptions, CacheTextOptions
from tuner_core.config.generate_options import GenerateOptions
from tuner_core.config.train_options import TrainOptions
from tuner_core.errors import PluginError
from tuner_core.memory.strategy_options import check_option_names, composed_options, strategy_mixins
from tuner_core.options import option_fields

if TYPE_CHECKING:
    from tuner_core.architecture import Architecture
    from tuner_core.memory.strategy import MemoryStrategy

#: The core options class of each architecture command.
COMMAND_OPTIONS: dict[str, type] = {
    "cache-latents": CacheLatentsOptions,
    "cache-text": CacheTextOptions,
    "train": TrainOptions,
    "generate": GenerateOptions,
}


def options_class(
    command: str, architecture: Architecture | None, strategies: Iterable[MemoryStrategy] = ()
) -> type:
    """The one options class ``command`` runs with under ``architecture``.

    That is the architecture's own class for the command, which subclasses the core's (so it holds the
    core's fields and its own), or the core's class when the architecture adds no options (or is
    ``None``). When some of ``strategies`` add options to the command (:attr:`MemoryStrategy.options`),
    it is a class made of their mixins and that class; the same inputs always give the same class.
    Pass every installed strategy (``plugins.memory_strategies()``): their options are then valid
    whichever is asked for.

    :raises PluginError: when the architecture's class does not subclass the core's, or redeclares one of
        its options, or a strategy's option has the name of another option (one flag would then mean two
        things).
    """
    core = COMMAND_OPTIONS[command]
    base = core if architecture is None else _architecture_class(command, architecture, core)
    declared = strategy_mixins(command, strategies)
    if not declared:
        return base
    owner = f"architecture {architecture.name!r} ({base.__name__})" if architecture else ""
    taken = {f.name: owner for f in option_fields(base)}
    taken.update({f.name: f"the core's {core.__name__}" for f in option_fields(core)})
    check_option_names(declared, taken)
    return composed_options(base, tuple(mixin for _, mixin in declared))


def _architecture_class(command: str, architecture: Architecture, core: type) -> type:
    own = architecture.options.get(command)
    if own is None:
        return core
    if not (isinstance(own, type) and issubclass(own, core)):
        raise PluginError(
            f"architecture {architecture.name!r}: the options of {command!r} ({getattr(own, '__name__', own)})"
            f" must subclass tuner_core.{core.__name__}"
        )
    clash = sorted(own_option_names(own, core) & {f.name for f in option_fields(core)})
    if clash:
        raise PluginError(
            f"architecture {architecture.name!r} redeclares options the core already has: "
            + ", ".join("--" + name for name in clash)
        )
    return own


def own_option_names(cls: type, core: type) -> set[str]:
    """The option names ``cls`` and its mixins declare themselves, not inherited from ``core``.

    For a class :func:`options_class` composed with strategies, that includes the strategies' options.
    """
    inherited = set(core.__mro__)
    return {
        name
        for klass in cls.__mro__
        if klass not in inherited
        for name in vars(klass).get("__annotations__", {})
    }
