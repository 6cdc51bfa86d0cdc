"""The repeated blocks an architecture declares in its ModelLayout, and hooks around each of them."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import nn

from tuner_core.architecture import ModelLayout
from tuner_core.errors import PluginError

if TYPE_CHECKING:
    from tuner_core.memory.strategy import MemoryStrategy


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


def install_block_hooks(
    model: nn.Module, layout: ModelLayout, strategies: Sequence[MemoryStrategy]
) -> list[object]:
    """Call each strategy's ``before_block`` / ``after_block`` around every declared block's forward and
    backward (in ``strategies`` order); returns the hook handles (``handle.remove()`` takes one off)."""
    from tuner_core.memory.strategy import MemoryStrategy

    acting = [
        s
        for s in strategies
        if type(s).before_block is not MemoryStrategy.before_block
        or type(s).after_block is not MemoryStrategy.after_block
    ]
    if acting:
        # The first block's inputs need no gradient (frozen embeddings), so torch fires its backward hook on
        # the outputs' gradients instead and warns each step; that is exactly when the block is done.
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
    handles: list[object] = []
    for index, block in enumerate(declared_blocks(model, layout) if acting else ()):

        def before(*_: object, i: int = index, b: nn.Module = block, backward: bool = False) -> None:
            for strategy in acting:
                strategy.before_block(i, b, backward=backward)

        def after(*_: object, i: int = index, b: nn.Module = block, backward: bool = False) -> None:
            for strategy in acting:
                strategy.after_block(i, b, backward=backward)

        handles += [
            block.register_forward_pre_hook(before),
            block.register_forward_hook(after),
            block.register_full_backward_pre_hook(functools.partial(before, backward=True)),
            block.register_full_backward_hook(functools.partial(after, backward=True)),
        ]
    return handles
