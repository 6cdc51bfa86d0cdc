"""Memory-aware loading of the encoders, on the core's checkpoint readers (:mod:`tuner_core.weights`).

The module is built with its parameters on the meta device (buffers stay real, so non-persistent tables
such as rotary frequencies need no loading), then every tensor is read, cast, moved and assigned one at a
time, so no weight sits in memory twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from accelerate import init_empty_weights
from torch import nn

from tuner_core import ModelLoadError
from tuner_core.weights import TensorSource, Transform, load_into_model, open_checkpoint, resolve_checkpoint
from tuner_framepack.encoders.locate import WeightsLocation

logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=nn.Module)

#: How the log names the model each command-line option loads (class names mean little to a user).
_MODEL_NAMES = {
    "--vae": "the VAE",
    "--image_encoder": "the image encoder",
    "--text_encoder1": "text encoder 1",
    "--text_encoder2": "text encoder 2",
}


def open_weights(location: WeightsLocation, option: str) -> TensorSource:
    """Open the weights at ``location`` (all shards of a set; ``.pt`` files without running pickled code).

    Errors name the command-line ``option`` the file came from: ``--vae x.ckpt: not a PyTorch checkpoint...``.
    """
    try:
        return open_checkpoint(resolve_checkpoint(location.file))
    except ModelLoadError as exc:
        message = str(exc)
        # Most core messages start with the file's path; "--vae <path>: ..." then reads as one sentence.
        separator = " " if Path(message.split(": ", 1)[0]).exists() else ": "
        raise ModelLoadError(f"{option}{separator}{message}") from None


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
    what = _MODEL_NAMES.get(option, f"the {option} model")
    logger.info("loaded %s (%d tensors) from %s", what, result.loaded, result.source)
    return model.eval()
