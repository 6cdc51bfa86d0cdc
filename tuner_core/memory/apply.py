"""Apply every enabled memory strategy to a loaded model."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import attrs
import torch
from torch import nn

from tuner_core.architecture import ModelLayout
from tuner_core.errors import NotAvailableError
from tuner_core.memory.blocks import install_block_hooks
from tuner_core.memory.strategy import MemorySettings, MemoryStrategy
from tuner_core.memory.strategy_options import strategy_settings
from tuner_core.plugins import Plugins
from tuner_core.weights.reader import TensorInfo
from tuner_core.weights.stream import StoredPlan, Transform, chain_transforms

log = logging.getLogger(__name__)


def _enabled(plugins: Plugins, settings: MemorySettings) -> list[tuple[MemoryStrategy, MemorySettings]]:
    """The enabled strategies in ascending ``order``, each with the settings it reads (its own options)."""
    chosen = []
    for strategy in plugins.memory_strategies():
        own = strategy_settings(strategy, settings)
        if strategy.enabled(own):
            chosen.append((strategy, own))
    return sorted(chosen, key=lambda pair: pair[0].order)


class StrategyStep:
    """One enabled strategy's tensor rewrite as a loader :data:`Transform` with ``plan``; the steps of all
    enabled strategies are chained in ``order`` by :func:`load_transform`."""

    def __init__(self, strategy: MemoryStrategy, layout: ModelLayout, settings: MemorySettings) -> None:
        self._strategy = strategy
        self._layout = layout
        self._settings = settings

    def plan(self, stored: Mapping[str, TensorInfo]) -> StoredPlan:
        """What the strategy takes from this checkpoint beyond the model's tensors."""
        return self._strategy.plan_load(stored, self._layout, self._settings) or StoredPlan()

    def __call__(self, key: str, tensor: torch.Tensor) -> Mapping[str, torch.Tensor]:
        """The strategy's ``transform_tensor``."""
        return self._strategy.transform_tensor(key, tensor, self._layout, self._settings)


def load_transform(layout: ModelLayout, settings: MemorySettings, plugins: Plugins) -> Transform | None:
    """The enabled strategies' tensor rewrites, chained in ``order``, for a loader to apply while the
    weights stream in (``None`` when no enabled strategy rewrites tensors or plans loads)."""
    steps = [
        StrategyStep(s, layout, own)
        for s, own in _enabled(plugins, settings)
        if type(s).transform_tensor is not MemoryStrategy.transform_tensor
        or type(s).plan_load is not MemoryStrategy.plan_load
    ]
    return chain_transforms(*steps)


def apply_memory_strategies(
    model: nn.Module, layout: ModelLayout, settings: MemorySettings, plugins: Plugins, device: torch.device
) -> list[str]:
    """Apply the enabled strategies in ascending ``order``; return their names."""
    enabled = _enabled(plugins, settings)
    for strategy, own in enabled:
        strategy.apply(model, layout, own, device)
        log.info("memory strategy: %s", strategy.name)
    install_block_hooks(model, layout, [s for s, _ in enabled])
    return [s.name for s, _ in enabled]


#: Options that only take effect through a memory strategy, by option name, with the settings that ask
#: for each alone (``--fp8`` is generate's name of train's ``--fp8_base``).
_STRATEGY_OPTIONS: dict[str, dict[str, object]] = {
    "fp8_base": {"fp8_base": True},
    "fp8": {"fp8_base": True},
    "fp8_scaled": {"fp8_base": True, "fp8_scaled": True},
    "blocks_to_swap": {"blocks_to_swap": 1},
    "use_pinned_memory_for_block_swap": {"blocks_to_swap": 1, "use_pinned_memory_for_block_swap": True},
    "gradient_checkpointing": {"gradient_checkpointing": True},
    "gradient_checkpointing_cpu_offload": {"gradient_checkpointing_cpu_offload": True},
}


def unavailable_memory_options(plugins: Plugins, *, training: bool) -> set[str]:
    """Names of the memory options no installed strategy acts on (their ``--help`` says so)."""
    strategies = list(plugins.memory_strategies())
    return {
        name
        for name, asked in _STRATEGY_OPTIONS.items()
        if not any(
            s.enabled(strategy_settings(s, attrs.evolve(MemorySettings(training=training), **asked)))
            for s in strategies
        )
    }


def check_memory_options(settings: MemorySettings, plugins: Plugins) -> None:
    """Refuse, before any model is loaded, an option no installed strategy would act on (never ignore it)."""
    asked = {
        "--fp8_base / --fp8": ("fp8_base", settings.fp8_base),
        "--fp8_scaled": ("fp8_scaled", settings.fp8_scaled),
        "--blocks_to_swap": ("blocks_to_swap", settings.blocks_to_swap > 0),
        "--gradient_checkpointing": ("gradient_checkpointing", settings.gradient_checkpointing),
        "--gradient_checkpointing_cpu_offload": (
            "gradient_checkpointing_cpu_offload",
            settings.gradient_checkpointing_cpu_offload,
        ),
    }
    missing = unavailable_memory_options(plugins, training=settings.training)
    for flag, (name, wanted) in asked.items():
        if wanted and name in missing:
            raise NotAvailableError(
                f"{flag}: no memory strategy for it is installed in this version of tuner"
            )
    for strategy, own in _enabled(plugins, settings):
        strategy.check(own)
