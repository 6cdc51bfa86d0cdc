"""Apply every enabled memory strategy to a loaded model."""

from __future__ import annotations

import logging

import attrs
import torch
from torch import nn

from tuner_core.architecture import ModelLayout
from tuner_core.errors import NotAvailableError
from tuner_core.memory.strategy import MemorySettings
from tuner_core.plugins import Plugins

log = logging.getLogger(__name__)


def apply_memory_strategies(
    model: nn.Module, layout: ModelLayout, settings: MemorySettings, plugins: Plugins, device: torch.device
) -> list[str]:
    """Apply the enabled strategies in ascending ``order``; return their names."""
    enabled = sorted((s for s in plugins.memory_strategies() if s.enabled(settings)), key=lambda s: s.order)
    for strategy in enabled:
        strategy.apply(model, layout, settings, device)
        log.info("memory strategy: %s", strategy.name)
    return [s.name for s in enabled]


#: Options that only take effect through a memory strategy, with the settings that ask for each alone.
_STRATEGY_OPTIONS = {
    "--fp8_base / --fp8": {"fp8_base": True},
    "--fp8_scaled": {"fp8_base": True, "fp8_scaled": True},
    "--blocks_to_swap": {"blocks_to_swap": 1},
}


def check_memory_options(settings: MemorySettings, plugins: Plugins) -> None:
    """Refuse, before any model is loaded, an option no installed strategy would act on (never ignore it)."""
    asked = {"--fp8_base / --fp8": settings.fp8_base, "--fp8_scaled": settings.fp8_scaled}
    asked["--blocks_to_swap"] = settings.blocks_to_swap > 0
    for flag, wanted in asked.items():
        alone = attrs.evolve(MemorySettings(training=settings.training), **_STRATEGY_OPTIONS[flag])
        if wanted and not any(s.enabled(alone) for s in plugins.memory_strategies()):
            raise NotAvailableError(
                f"{flag}: no memory strategy for it is installed in this version of tuner"
            )
