"""Options a memory strategy adds to a command, mixed into the command's options class.

A strategy declares, per command, an attrs class of option fields (:attr:`MemoryStrategy.options`). The
command then runs with one class that subclasses those mixins and the command's own options class, so
``--help``, config files and validation treat a strategy's options like the core's, and the strategy
reads them back from ``settings.options``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from tuner_core.errors import PluginError
from tuner_core.memory.strategy import MemorySettings, MemoryStrategy
from tuner_core.options import META_KEY, option_fields

#: The commands that load models the strategies act on (caching commands run no memory strategy).
STRATEGY_COMMANDS = ("train", "generate")
_HOW = "declare it with @attrs.frozen(kw_only=True, slots=False) and tuner_core.option() fields"


def strategy_mixins(command: str, strategies: Iterable[MemoryStrategy]) -> list[tuple[MemoryStrategy, type]]:
    """``(strategy, options mixin)`` for each strategy that adds options to ``command``.

    Sorted by ``order`` then name, so the same strategies always compose into the same class whatever
    order they were registered in.

    :raises PluginError: for a mixin that cannot be mixed in, or options declared for a command other than
        ``train`` and ``generate``.
    """
    found: dict[int, tuple[MemoryStrategy, type]] = {}
    for strategy in strategies:
        declared = strategy.options
        unknown = sorted(set(declared) - set(STRATEGY_COMMANDS))
        if unknown:
            raise PluginError(
                f"memory strategy {strategy.name!r} declares options for {', '.join(map(repr, unknown))}; "
                f"memory strategies act only in {' and '.join(STRATEGY_COMMANDS)}"
            )
        mixin = declared.get(command)
        if mixin is not None:
            _check_mixin(strategy, command, mixin)
            found[id(strategy)] = (strategy, mixin)  # a strategy listed twice adds its options once
    return sorted(found.values(), key=lambda pair: (pair[0].order, pair[0].name))


def _check_mixin(strategy: MemoryStrategy, command: str, mixin: Any) -> None:
    where = f"memory strategy {strategy.name!r}: the options of {command!r}"
    if not (isinstance(mixin, type) and attrs.has(mixin)):
        raise PluginError(f"{where} ({mixin!r}) are not an attrs class; {_HOW}")
    if any("__slots__" in vars(klass) for klass in mixin.__mro__[:-1]):
        # Two slotted bases cannot share one instance layout, and the command's class is slotted.
        raise PluginError(f"{where} ({mixin.__name__}) are a slotted class; {_HOW}")
    for field in attrs.fields(mixin):
        if META_KEY not in field.metadata:
            raise PluginError(f"{where}: field {field.name!r} is not made with tuner_core.option(); {_HOW}")
        if field.default is attrs.NOTHING:
            # Every run carries every installed strategy's options, asked for or not.
            raise PluginError(f"{where}: option --{field.name} needs a default")


def check_option_names(declared: Iterable[tuple[MemoryStrategy, type]], taken: Mapping[str, str]) -> None:
    """Refuse a strategy option whose name is already an option of the command or of another strategy.

    :param taken: who already declares each option name, for the message (``"the core's TrainOptions"``).
    :raises PluginError: naming the option and both declarers.
    """
    owners = dict(taken)
    for strategy, mixin in declared:
        for field in option_fields(mixin):
            if field.name in owners:
                raise PluginError(
                    f"memory strategy {strategy.name!r} declares option --{field.name}, which "
                    f"{owners[field.name]} already declares (one flag would mean two things); one of them "
                    "must rename it"
                )
            owners[field.name] = f"memory strategy {strategy.name!r}"


@functools.cache
def composed_options(base: type, mixins: tuple[type, ...]) -> type:
    """The options class made of ``mixins`` and ``base``: an attrs frozen, keyword-only subclass of each.

    Cached, so the same parts give the same class: an options object stays equal to one built again, and
    ``isinstance`` checks against the base or a mixin hold. Its instances pickle by their parts (importable
    by name) rather than by this class, which no module defines: a spawned worker composes it again.
    """
    name = f"{base.__name__}[{', '.join(m.__name__ for m in mixins)}]"
    namespace = {
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": base.__doc__,
        "__reduce__": _reduce,
        "_tuner_parts": (base, mixins),
    }
    try:
        cls = type(name, (*mixins, base), namespace)
    except TypeError as exc:
        raise PluginError(f"cannot mix memory strategy options into {base.__name__}: {exc}") from exc
    return attrs.frozen(kw_only=True)(cls)


def _reduce(self: Any) -> tuple[Any, ...]:
    base, mixins = type(self)._tuner_parts
    return _blank, (base, mixins), self.__getstate__()


def _blank(base: type, mixins: tuple[type, ...]) -> Any:
    """An empty instance of the composed class, for unpickling to fill in (no validation runs twice)."""
    cls = composed_options(base, mixins)
    return cls.__new__(cls)


def strategy_settings(strategy: MemoryStrategy, settings: MemorySettings) -> MemorySettings:
    """The settings to hand ``strategy``: with its own options readable on ``settings.options``.

    Settings that carry no options object (a probe of the fixed fields, or settings a program built)
    get the strategy's options at their defaults.

    :raises PluginError: when the options object was built without this strategy's options (a caller of
        ``options_class`` or ``build_command_options`` did not pass the installed strategies).
    """
    mixin = strategy.options.get("train" if settings.training else "generate")
    if mixin is None or isinstance(settings.options, mixin):
        return settings
    if settings.options is None:
        return attrs.evolve(settings, options=mixin())
    raise PluginError(
        f"memory strategy {strategy.name!r} declares options, but the command's options "
        f"({type(settings.options).__name__}) were built without them; build them with "
        "options_class(command, architecture, plugins.memory_strategies()) or pass "
        "strategies=plugins.memory_strategies() to build_command_options"
    )
