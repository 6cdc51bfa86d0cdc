"""The arithmetic of block swap: how ``--blocks_to_swap N`` splits over the declared block lists, the most
each list can swap, and which blocks trade places after each block runs (the reference's schedule).

See :mod:`tuner_core.memory.block_swap` for what the numbers mean; nothing here touches a tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

from tuner_core.architecture import ModelLayout
from tuner_core.errors import ConfigError, PluginError

# -- the split -------------------------------------------------------------------------------------------


def split_blocks_to_swap(blocks_to_swap: int, sizes: Sequence[int]) -> tuple[int, ...]:
    """How many blocks of each declared list ``--blocks_to_swap`` swaps (the reference's rule).

    :raises PluginError: for more than two block lists (no rule to split over them).
    """
    if blocks_to_swap <= 0:
        return (0,) * len(sizes)
    if len(sizes) == 1:
        return (blocks_to_swap,)
    if len(sizes) == 2:
        first = blocks_to_swap // 2
        return (first, (blocks_to_swap - first) * 2 + 1)
    raise PluginError(
        f"block swap splits --blocks_to_swap over one or two block lists; this model declares {len(sizes)}"
    )


def list_capacity(size: int, *, training: bool) -> int:
    """The most blocks of a list of ``size`` that can swap (one fewer in training, see the module doc)."""
    return max(0, size - (2 if training else 1))


def max_blocks_to_swap(sizes: Sequence[int], *, training: bool) -> int:
    """The largest ``--blocks_to_swap`` whose split fits every list (38 / 36 for FramePack's 20 + 40)."""
    best = 0
    for n in range(1, sum(sizes) * 2 + 2):
        split = split_blocks_to_swap(n, sizes)
        if all(s <= list_capacity(size, training=training) for s, size in zip(split, sizes)):
            best = n
    return best


def check_blocks_to_swap(
    blocks_to_swap: int, layout: ModelLayout, sizes: Sequence[int], *, training: bool
) -> tuple[int, ...]:
    """The split of ``blocks_to_swap``; refuses more than the layout declares or the lists hold."""
    mode = "in training" if training else "in inference"
    limit = layout.max_blocks_to_swap_training if training else layout.max_blocks_to_swap_inference
    if limit is not None and blocks_to_swap > limit:
        raise ConfigError(
            f"--blocks_to_swap {blocks_to_swap} is above the most this model can swap {mode} ({limit})"
        )
    split = split_blocks_to_swap(blocks_to_swap, sizes)
    for path, swapped, size in zip(layout.block_lists, split, sizes):
        if swapped > list_capacity(size, training=training):
            raise ConfigError(
                f"--blocks_to_swap {blocks_to_swap} would swap {swapped} of the {size} blocks of {path}; "
                f"at most {list_capacity(size, training=training)} can swap {mode}: give at most "
                f"{max_blocks_to_swap(sizes, training=training)}"
            )
    return split


# -- the schedule (pure index arithmetic) ----------------------------------------------------------------


def forward_move(size: int, swapped: int, index: int, *, forward_only: bool) -> tuple[int, int] | None:
    """``(outgoing, incoming)`` started after block ``index`` of a list ran forward, or ``None``."""
    if swapped <= 0:
        return None
    if not forward_only:
        return (index, size - swapped + index) if index < swapped else None
    if swapped < size // 2:  # only the edges move
        if index < swapped:
            return index, size - swapped + index
        return (index, index - (size - swapped)) if index >= size - swapped else None
    return index, (size - swapped + index) % size  # every block moves, wrapping around


def backward_move(size: int, swapped: int, index: int) -> tuple[int, int] | None:
    """``(outgoing, incoming)`` started after block ``index`` ran backward: the block after it goes out."""
    done = size - index - 1  # blocks whose backward finished before this one
    return (index + 1, swapped - done) if 0 < done <= swapped else None
