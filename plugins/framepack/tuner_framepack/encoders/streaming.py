"""Memory-aware loading of the encoders, on the core's checkpoint readers (:mod:`tuner_core.weights`).

The module is built with its parameters on the meta device (buffers stay real, so non-persistent tables
such as rotary frequencies need no loading), then every tensor is read, cast, moved and assigned one at a
time, so no weight sits in memory twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch
from accelerate import init_empty_weights
from torch import nn

from tuner_core import ModelLoadError
from tuner_core.weights import TensorSource, Transform, load_into_model, open_checkpoint, resolve_checkpoint
from tuner_framepack.encoders.locate import WeightsLocation

logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=nn.Module)


def open_weights(location: WeightsLocation) -> TensorSource:
    """Open the weights at ``location`` (all shards of a set; ``.pt`` files without running pickled code)."""
    return open_checkpoint(resolve_checkpoint(location.file))


def tensor_shapes(source: TensorSource, rename: Callable[[str], str | None]) -> dict[str, tuple[int, ...]]:
    """Stored shapes by model name (after ``rename``; dropped tensors left out), read from headers only."""
    return {name: info.shape for key, info in source.infos().items() if (name := rename(key)) is not None}


def build_empty(factory: Callable[[], ModelT]) -> ModelT:
    """Run ``factory`` with parameters created on the meta device (no memory, no random init)."""
    with init_empty_weights(include_buffers=False):
        model = factory()
    return model.requires_grad_(False)


def load_weights(
    model: ModelT,
    source: TensorSource,
    rename: Callable[[str], str | None],
    *,
    device: torch.device | str,
    dtype: torch.dtype,
    option: str,
    transform: Transform | None = None,
) -> ModelT:
    """Stream ``source`` into the empty ``model`` (strictly: every name and shape must match), then move the
    remaining buffers to ``device`` and switch to eval mode.

    Mismatch errors name the command-line ``option`` the file came from.
    """
    try:
        result = load_into_model(
            model, source, device=device, dtype=dtype, rename=rename, transform=transform, strict=True
        )
    except ModelLoadError as exc:
        raise ModelLoadError(f"{option}: {exc}") from None
    model.to(device)
    logger.info("Loaded %s from %s (%d tensors)", type(model).__name__, result.source, result.loaded)
    return model.eval()
