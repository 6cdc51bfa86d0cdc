"""Gradient checkpointing per declared block: keep only block inputs, recompute the rest in backward.

With ``--gradient_checkpointing_cpu_offload`` the kept inputs also wait on the host
(:mod:`tuner_core.memory.activation_offload`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tuner_core.architecture import ModelLayout
from tuner_core.memory.activation_offload import ActivationOffload
from tuner_core.memory.blocks import declared_blocks
from tuner_core.memory.strategy import MemorySettings, MemoryStrategy

log = logging.getLogger(__name__)

#: Where offloaded activations wait.
OFFLOAD_DEVICE = torch.device("cpu")


def _checkpointed(block: nn.Module, forward: Any, offload: ActivationOffload | None) -> Any:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not (block.training and torch.is_grad_enabled()):
            return forward(*args, **kwargs)
        # Non-reentrant checkpointing saves the block's inputs under the hooks in force here (the offload's)
        # and what the block saves inside under its own, so only the inputs move to the host.
        with offload.hooks() if offload is not None else contextlib.nullcontext():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def activation_offload(model: nn.Module) -> ActivationOffload | None:
    """The offload :class:`GradientCheckpointing` installed on ``model`` (``None`` without offload)."""
    return getattr(model, "_tuner_activation_offload", None)


class GradientCheckpointing(MemoryStrategy):
    """``--gradient_checkpointing`` (and ``--gradient_checkpointing_cpu_offload``) for any declared blocks.

    ``--gradient_checkpointing_cpu_offload`` alone implies checkpointing (the reference ignores it without
    ``--gradient_checkpointing``; here asking for it is enough, and the log says so).
    """

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
        """Wrap each block's forward in a non-reentrant checkpoint (works with DDP and frozen weights),
        with one :class:`ActivationOffload` shared by all blocks when offload is asked for."""
        offload = None
        if settings.gradient_checkpointing_cpu_offload:
            offload = ActivationOffload(OFFLOAD_DEVICE)
            model._tuner_activation_offload = offload
            implied = "" if settings.gradient_checkpointing else " (implies --gradient_checkpointing)"
            where = (
                "stay in place: the model computes on the cpu" if device.type == "cpu" else "wait on the cpu"
            )
            log.info("activation offload%s: checkpointed block inputs %s", implied, where)
        for block in declared_blocks(model, layout):
            if getattr(block, "_tuner_checkpointed", False):
                continue
            block.forward = _checkpointed(block, block.forward, offload)
            block._tuner_checkpointed = True
