"""Build the optimizer named by ``--optimizer_type`` with ``--optimizer_args``, and describe it for metadata.

Names (case-insensitive for the built-in three):

* ``AdamW``: :class:`torch.optim.AdamW`.
* ``AdamW8bit``: ``bitsandbytes.optim.AdamW8bit`` (8-bit optimizer state).
* ``AdaFactor``: ``transformers.optimization.Adafactor``. ``relative_step`` defaults to True as in the
  reference: Adafactor then computes its own step size (``min(1e-2, 1/sqrt(step))``, scaled by the
  parameter's RMS), ``--learning_rate`` only sets the value logged before the first step, and the learning
  rate scheduler becomes Adafactor's proxy schedule (see ``lr_schedulers``). Pass
  ``--optimizer_args relative_step=False`` to drive Adafactor with ``--learning_rate`` and any scheduler.
* a class in :mod:`torch.optim` by its name (``SGD``), or any dotted class path (``torch.optim.SGD``,
  ``bitsandbytes.optim.AdEMAMix8bit``, ``pytorch_optimizer.ADOPT``).

``--optimizer_args`` items are ``key=value``; values go through :func:`ast.literal_eval` and stay strings
when that fails, so ``betas=0.9,0.999`` is a tuple and ``foo=bar`` is ``"bar"``.
"""

from __future__ import annotations

import ast
import importlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import torch

from tuner_core.errors import ConfigError, NotAvailableError

logger = logging.getLogger(__name__)

BUILTIN_OPTIMIZERS = ("AdamW", "AdamW8bit", "AdaFactor")
#: bitsandbytes keeps a 32-bit state for tensors smaller than this; the CPU probe must exceed it.
_BNB_MIN_8BIT_SIZE = 4096


@attrs.frozen(kw_only=True)
class BuiltOptimizer:
    """An optimizer with what the rest of the run needs to know about it.

    :param optimizer: the optimizer itself.
    :param optimizer_class: its class.
    :param kwargs: the keyword arguments it was built with besides ``params`` and ``lr``.
    :param relative_step: True for Adafactor computing its own step size (the learning rate and the
        scheduler's curve do not apply).
    """

    optimizer: torch.optim.Optimizer
    optimizer_class: type
    kwargs: dict[str, Any]
    relative_step: bool = False

    @property
    def description(self) -> str:
        """The ``ss_optimizer`` metadata value, ``module.Class(key=value,...)``."""
        return optimizer_description(self.optimizer_class, self.kwargs)


def parse_optimizer_args(
    args: Sequence[str] | Mapping[str, Any] | None, *, option: str = "--optimizer_args"
) -> dict[str, Any]:
    """Turn ``key=value`` items (``--optimizer_args``, ``--network_args``) into keyword arguments (a mapping
    passes through); errors name ``option``."""
    if args is None:
        return {}
    if isinstance(args, Mapping):
        return dict(args)
    parsed: dict[str, Any] = {}
    for item in args:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(
                f"{option}: {item!r} is not key=value (for example weight_decay=0.01 betas=0.9,0.999)"
            )
        if key in parsed:
            raise ConfigError(f"{option} gives {key!r} twice")
        try:
            parsed[key] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            parsed[key] = raw.strip()  # not a Python literal: a plain string argument
    return parsed


def optimizer_description(optimizer_class: type, kwargs: Mapping[str, Any]) -> str:
    """``module.Class(key=value,...)``, or ``module.Class`` without arguments (the ``ss_optimizer`` format)."""
    name = f"{optimizer_class.__module__}.{optimizer_class.__qualname__}"
    if not kwargs:
        return name
    return name + "(" + ",".join(f"{key}={value}" for key, value in kwargs.items()) + ")"


def readable_description(optimizer_class: type, kwargs: Mapping[str, Any]) -> str:
    """``AdamW``, ``AdamW8bit from bitsandbytes``, ``SGD with momentum=0.9``: for the log, not metadata."""
    name = optimizer_class.__name__
    package = optimizer_class.__module__.partition(".")[0]
    if package != "torch":  # the package says which AdamW it is
        name += f" from {package}"
    if kwargs:
        name += " with " + ", ".join(f"{key}={value}" for key, value in kwargs.items())
    return name


def resolve_optimizer_class(optimizer_type: str) -> type[torch.optim.Optimizer]:
    """The optimizer class that ``--optimizer_type`` names (see the module docstring)."""
    lowered = optimizer_type.lower()
    if lowered == "adamw":
        return torch.optim.AdamW
    if lowered == "adamw8bit":
        return _import_attribute("bitsandbytes.optim", "AdamW8bit", optimizer_type)
    if lowered == "adafactor":
        return _import_attribute("transformers.optimization", "Adafactor", optimizer_type)
    if "." in optimizer_type:
        module_name, _, class_name = optimizer_type.rpartition(".")
        found = _import_attribute(module_name, class_name, optimizer_type)
    else:
        found = getattr(torch.optim, optimizer_type, None)
        if found is None:
            raise ConfigError(
                f"--optimizer_type {optimizer_type!r} is unknown: use {', '.join(BUILTIN_OPTIMIZERS)}, "
                "a torch.optim class name (SGD) or a dotted class path (torch.optim.SGD)"
            )
    if not (isinstance(found, type) and issubclass(found, torch.optim.Optimizer)):
        raise ConfigError(f"--optimizer_type {optimizer_type!r} is not a torch.optim.Optimizer class")
    return found


def _import_attribute(module_name: str, attribute: str, optimizer_type: str) -> Any:
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # an optional package may fail with more than ImportError on import
        raise NotAvailableError(
            f"--optimizer_type {optimizer_type}: cannot import {module_name} ({type(error).__name__}: "
            f"{error}); install the package that provides it"
        ) from error
    if not hasattr(module, attribute):
        raise ConfigError(f"--optimizer_type {optimizer_type}: {module_name} has no {attribute!r}")
    return getattr(module, attribute)


def build_optimizer(
    params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
    *,
    optimizer_type: str = "AdamW",
    learning_rate: float,
    optimizer_args: Sequence[str] | Mapping[str, Any] | None = None,
    report: bool = True,
) -> BuiltOptimizer:
    """Build the optimizer ``optimizer_type`` over ``params`` (tensors or parameter groups with own ``lr``).

    :param report: log what was built (off for the pre-flight probe, so a run says it once).

    :raises ConfigError: unknown ``--optimizer_type`` or arguments the optimizer rejects.
    :raises NotAvailableError: the optimizer's package is missing, or bitsandbytes cannot run here.
    """
    params = list(params)
    if not params:
        raise ConfigError("there is nothing to train: no trainable parameters reached the optimizer")
    kwargs = parse_optimizer_args(optimizer_args)
    if "lr" in kwargs:
        raise ConfigError("set the learning rate with --learning_rate, not --optimizer_args lr=...")
    optimizer_class = resolve_optimizer_class(optimizer_type)
    lr: float | None = learning_rate
    relative_step = False
    if _is_adafactor(optimizer_class):
        relative_step = _adafactor_settings(kwargs, learning_rate, report=report)
        if relative_step:
            lr = None  # Adafactor refuses a manual lr together with relative_step
    elif optimizer_class.__module__.startswith("bitsandbytes"):
        _check_bitsandbytes_runs(optimizer_class, optimizer_type)
    try:
        optimizer = optimizer_class(params, lr=lr, **kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"--optimizer_args {_format_args(kwargs)} rejected by "
            f"{optimizer_description(optimizer_class, {})}: {error}"
        ) from error
    if report:
        logger.info("optimizer: %s", readable_description(optimizer_class, kwargs))
    return BuiltOptimizer(
        optimizer=optimizer, optimizer_class=optimizer_class, kwargs=kwargs, relative_step=relative_step
    )


def check_optimizer_options(
    optimizer_type: str, learning_rate: float, optimizer_args: Sequence[str] | Mapping[str, Any] | None
) -> None:
    """Build the optimizer over one probe parameter, so that an unknown type, a missing package or a
    rejected argument is reported before any model loads. Raises what :func:`build_optimizer` raises."""
    probe = torch.nn.Parameter(torch.zeros(1))
    build_optimizer(
        [probe],
        optimizer_type=optimizer_type,
        learning_rate=learning_rate,
        optimizer_args=optimizer_args,
        report=False,
    )


def uses_relative_step(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` is an Adafactor that computes its own step size (no external schedule)."""
    return _is_adafactor(type(optimizer)) and bool(optimizer.defaults.get("relative_step"))


def _is_adafactor(optimizer_class: type) -> bool:
    # By name, so that checking does not import transformers.
    return optimizer_class.__name__ == "Adafactor" and optimizer_class.__module__.startswith("transformers")


def _adafactor_settings(kwargs: dict[str, Any], learning_rate: float, *, report: bool) -> bool:
    """Fill in Adafactor's ``relative_step`` default (True) and return it; log what it means."""
    kwargs.setdefault("relative_step", True)
    if kwargs.get("warmup_init") and not kwargs["relative_step"]:
        if report:
            logger.info("AdaFactor: warmup_init=True needs relative_step, so relative_step is set to True")
        kwargs["relative_step"] = True
    if kwargs["relative_step"] and report:
        logger.info(
            "AdaFactor with relative_step=True computes its own step size; --learning_rate %g is only "
            "the value logged before the first step, and the scheduler follows Adafactor's own rate. "
            "Pass --optimizer_args relative_step=False scale_parameter=False to use --learning_rate",
            learning_rate,
        )
    return bool(kwargs["relative_step"])


def _check_bitsandbytes_runs(optimizer_class: type, optimizer_type: str) -> None:
    """Without CUDA, try one step of the 8-bit optimizer on a CPU tensor; raise if it cannot run."""
    if torch.cuda.is_available():
        return
    probe = torch.nn.Parameter(torch.zeros(_BNB_MIN_8BIT_SIZE))
    probe.grad = torch.full_like(probe, 1e-3)
    try:
        optimizer_class([probe], lr=1e-3).step()
    except Exception as error:  # bitsandbytes raises many kinds of errors when its backend is missing
        raise NotAvailableError(
            f"--optimizer_type {optimizer_type}: bitsandbytes' 8-bit optimizers do not work on this "
            f"machine, which has no CUDA device ({type(error).__name__}: {error}). Use --optimizer_type "
            "AdamW here, or train on a GPU"
        ) from error


def _format_args(kwargs: Mapping[str, Any]) -> str:
    return " ".join(f"{key}={value!r}" for key, value in kwargs.items()) or "(none)"
