"""The layers of a model by module path, from the model itself or from a checkpoint's header.

A layer is a module with a ``weight`` of two or more dimensions (Linear, Conv); its path is what
``model.named_modules()`` calls it. Network files name layers by these paths (in their own spellings).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

__all__ = ["checkpoint_layer_paths", "layer_paths"]


def layer_paths(model: nn.Module) -> list[str]:
    """The paths of ``model``'s layers, in model order (a model on the meta device will do)."""
    return [
        name[: -len(".weight")]
        for name, param in model.named_parameters()
        if name.endswith(".weight") and param.dim() >= 2
    ]


def checkpoint_layer_paths(path: str | Path) -> list[str]:
    """The layers named in a checkpoint's header (a file, a shard set or a snapshot directory); no weights
    are read."""
    from tuner_core.weights.reader import open_checkpoint

    with open_checkpoint(path) as source:
        infos = source.infos()
    return [
        name[: -len(".weight")]
        for name, info in infos.items()
        if name.endswith(".weight") and len(info.shape) >= 2
    ]
