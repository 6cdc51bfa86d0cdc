"""Apply every enabled memory strategy to a loaded model."""

from __future__ import annotations

import logging

import torch
from torch import nn

from tuner_core.architecture import ModelLayout
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
