"""The core's own hook implementations: the last answer of every per-call hook, and its memory strategies.

Registered first (so it runs last). Each per-call hook is answered by the architecture's method named in
:data:`~tuner_core.hookspecs.ARCHITECTURE_METHODS`: an architecture plugin only writes methods, and another
plugin can still take over a single call by answering first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tuner_core import hookspecs
from tuner_core.hookspecs import hookimpl


def _answered_by(hook_name: str, method: str) -> Callable[..., Any]:
    """A ``trylast`` implementation of ``hook_name`` that calls ``architecture.<method>``."""
    spec = getattr(hookspecs, hook_name)
    names = spec.__code__.co_varnames[: spec.__code__.co_argcount]

    def implementation(*args: Any) -> Any:
        # pluggy passes the arguments positionally, in the order of the names it reads from __wrapped__.
        arguments = dict(zip(names, args))
        return getattr(arguments.pop("architecture"), method)(**arguments)

    implementation.__wrapped__ = spec  # type: ignore[attr-defined]
    implementation.__name__ = implementation.__qualname__ = hook_name
    return hookimpl(trylast=True)(implementation)


for _hook, _method in hookspecs.ARCHITECTURE_METHODS.items():
    globals()[_hook] = _answered_by(_hook, _method)


@hookimpl
def tuner_register_memory_strategies(register: Callable[[object], None]) -> None:
    """The core's own memory strategies."""
    from tuner_core.memory.block_swap import BlockSwap
    from tuner_core.memory.checkpointing import GradientCheckpointing
    from tuner_core.memory.fp8 import Fp8Weights

    register(GradientCheckpointing())
    register(BlockSwap())
    register(Fp8Weights())
