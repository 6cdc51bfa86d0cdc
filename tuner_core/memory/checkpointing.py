"""Gradient checkpointing per declared block: keep only block inputs, recompute the rest in backward."""

from __future__ import annotations

import contextlib
import functools
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tuner_core.architecture import ModelLayout
from tuner_core.memory.blocks import declared_blocks
from tuner_core.memory.strategy import MemorySettings, MemoryStrategy


def _checkpointed(block: nn.Module, forward: Any, offload: bool) -> Any:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not (block.training and torch.is_grad_enabled()):
            return forward(*args, **kwargs)
        # With offload, the few tensors checkpointing keeps (the block inputs) wait on the host.
        saving = (
            torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available())
            if offload
            else contextlib.nullcontext()
        )
        with saving:
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


class GradientCheckpointing(MemoryStrategy):
    """``--gradient_checkpointing`` (and ``--gradient_checkpointing_cpu_offload``) for any declared blocks."""

    name: ClassVar[str] = "gradient-checkpointing"
    order: ClassVar[int] = 50

    def enabled(self, settings: MemorySettings) -> bool:
        """Only while training: inference keeps no activations anyway."""
        return settings.training and (
            settings.gradient_checkpointing or settings.gradient_checkpointing_cpu_offload
        )

    def apply(
        self, model: nn.Module, layout: ModelLayout, settings: MemorySettings, device: torch.device
    ) -> None:
        """Wrap each block's forward in a non-reentrant checkpoint (works with DDP and frozen weights)."""
        for block in declared_blocks(model, layout):
            if getattr(block, "_tuner_checkpointed", False):
                continue
            block.forward = _checkpointed(block, block.forward, settings.gradient_checkpointing_cpu_offload)
            block._tuner_checkpointed = True
