"""Find the repeated blocks an architecture declares in its ModelLayout."""

from __future__ import annotations

from torch import nn

from tuner_core.architecture import ModelLayout
from tuner_core.errors import PluginError


def declared_blocks(model: nn.Module, layout: ModelLayout) -> list[nn.Module]:
    """Every block of every ``layout.block_lists`` entry, in call order."""
    blocks: list[nn.Module] = []
    for path in layout.block_lists:
        try:
            container = model.get_submodule(path)
        except AttributeError:
            raise PluginError(
                f"the architecture declares block list {path!r}, but {type(model).__name__} has no such module"
            ) from None
        if not isinstance(container, (nn.ModuleList, nn.Sequential)):
            raise PluginError(
                f"declared block list {path!r} is a {type(container).__name__}, not a ModuleList"
            )
        blocks.extend(container)
    return blocks
