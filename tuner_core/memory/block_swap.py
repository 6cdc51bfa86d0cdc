"""Block swap (``--blocks_to_swap N``): the Linear weights of N blocks wait in host memory between uses.

What moves, and when, follows the reference (musubi-tuner's ``custom_offloading_utils.ModelOffloader``):

- **The split.** One declared block list swaps N of its blocks. Two lists (double-stream then
  single-stream, as FramePack/HunyuanVideo/Flux declare) swap ``N // 2`` of the first and
  ``(N - N // 2) * 2 + 1`` of the second. A list can swap at most ``len - 1`` blocks in inference and
  ``len - 2`` in training (a backward pass needs the second-to-last block on the device before the first
  reverse swap can bring one back), which for FramePack's 20 + 40 blocks gives the reference's maxima:
  38 in inference, 36 in training. The layout's declared maxima are checked too.
- **What moves.** Only the ``.weight`` of the Linear layers inside the swapped blocks (modules that are
  ``nn.Linear`` or whose class name ends in ``Linear``, as the reference selects them); biases, norms,
  buffers and everything outside the blocks stay on the device, and so do network (LoRA) modules, which
  live outside the blocks' module tree. The Parameter objects never change, only their ``.data``.
- **Where blocks start.** The first ``len - s`` blocks of a list are on the device, the last ``s`` parked.
- **Training** (forward and backward): after block ``i < s`` runs forward it is exchanged for block
  ``len - s + i``; after block ``b`` runs backward, block ``b + 1`` (finished one block earlier) is
  exchanged for block ``b + 1 - (len - s)``, so blocks come back in reverse order for backward and the
  list ends where it started. Each exchange reuses the outgoing block's device storage, and because the
  pairs are the same both ways a block finds its own storage again for its backward: tensors autograd
  saved in forward (views of the weights) stay right without gradient checkpointing. With gradient
  checkpointing the recomputation inside backward runs after the block came back (the backward hooks fire
  first) and calls no block hooks (forward hooks called inside backward are ignored anyway).
- **Inference** (forward only): with ``s < len // 2`` only the edge blocks move (block ``i < s`` for
  ``len - s + i``, then back); otherwise every block moves, wrapping around (block ``i`` for
  ``(len - s + i) % len``). A forward pass without gradients in training mode uses this schedule too.

Transfers overlap compute (:mod:`tuner_core.memory.transfer`): ``before_block`` waits for the block's
weights, ``after_block`` starts the next exchange. Switch modes around samples taken while training
with :func:`switch_to_inference` / :func:`switch_to_training` (the reference's
``switch_block_swap_for_inference`` / ``_for_training``). After a pass that ended early the next pass puts
the blocks back where they start, synchronously.

After block swap placed a model, nothing may move it whole: ``model.to(device)``, accelerate's device
placement (prepare it with ``device_placement=[False]``) or ``Components.offload`` would pull the parked
weights onto the GPU; every forward pass checks that the weights are where block swap left them. One
forward pass is followed by its backward (or by none); passes of a list run its blocks in order. Trained
(not frozen) swapped weights are refused: train a network on them. Without CUDA, block swap refuses to run
unless ``TUNER_BLOCK_SWAP_CPU=1`` (tests: the CPU is then both devices and parked weights read as NaN).
"""

from __future__ import annotations

import logging
import os
from typing import ClassVar

import attrs
import torch
from torch import nn

from tuner_core.architecture import ModelLayout
from tuner_core.errors import ConfigError, NotAvailableError, NotSupportedError, PluginError
from tuner_core.memory.block_swap_plan import (
    backward_move,
    check_blocks_to_swap,
    forward_move,
    list_capacity,
)
from tuner_core.memory.blocks import declared_blocks
from tuner_core.memory.strategy import MemorySettings, MemoryStrategy
from tuner_core.memory.transfer import WeightTransfer

log = logging.getLogger(__name__)

#: Set to ``1`` to let block swap run with the CPU as both devices (tests; it saves no memory).
ENV_CPU = "TUNER_BLOCK_SWAP_CPU"
_SWAPPER = "_tuner_block_swap"
_SLOT = "_tuner_block_swap_slot"


def block_swap_device_problem(device: torch.device | str | None = None) -> str | None:
    """Why block swap cannot run on ``device`` (default: CUDA if present, else the CPU); ``None`` if it can."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" or (device.type == "cpu" and os.environ.get(ENV_CPU) == "1"):
        return None
    return (
        f"--blocks_to_swap needs a CUDA GPU (the device here is {device.type}): it keeps block weights in "
        "host memory and copies them to the GPU as the blocks run"
    )


def check_block_swap_device(settings: MemorySettings, device: torch.device | str | None = None) -> None:
    """Refuse block swap where it cannot run (pre-flight calls this without a device)."""
    problem = block_swap_device_problem(device) if settings.blocks_to_swap > 0 else None
    if problem:
        raise NotAvailableError(problem)


def swap_weights(block: nn.Module) -> list[nn.Parameter]:
    """The weights block swap moves: every Linear layer's ``.weight`` inside ``block``, in module order."""
    return [
        module.weight
        for module in block.modules()
        if (isinstance(module, nn.Linear) or type(module).__name__.endswith("Linear"))
        and isinstance(getattr(module, "weight", None), nn.Parameter)
    ]


# -- the runtime -----------------------------------------------------------------------------------------


@attrs.define(eq=False)
class SwappedList:
    """One declared block list under block swap."""

    path: str
    blocks: list[nn.Module]
    weights: list[list[nn.Parameter]]
    swapped: int
    #: Which blocks' weights are on the device (or on their way there) now.
    resident: list[bool]
    #: The schedule of the pass under way (set as its first block starts).
    forward_only: bool = True

    @property
    def start(self) -> list[bool]:
        """Where every pass starts and ends: the first ``len - swapped`` blocks on the device."""
        return [i < len(self.blocks) - self.swapped for i in range(len(self.blocks))]


def _in_backward() -> bool:
    current = getattr(torch._C, "_current_graph_task_id", None)
    return current is not None and current() != -1


class BlockSwapper:
    """The state of block swap on one model: its lists, its transfer, its mode. Made by
    :func:`enable_block_swap`; the :class:`BlockSwap` strategy's block hooks call :meth:`before` and
    :meth:`after`."""

    def __init__(self, lists: list[SwappedList], transfer: WeightTransfer, *, training: bool) -> None:
        self.lists = lists
        self.transfer = transfer
        self.training = training

    def before(self, k: int, index: int, *, backward: bool) -> None:
        """Block ``index`` of list ``k`` is about to run: wait until its weights are on the device."""
        part = self.lists[k]
        if backward and not self.training:
            raise RuntimeError(
                "block swap is in inference mode: call switch_to_training(model) before a backward pass"
            )
        if not backward:
            if _in_backward():
                return  # a checkpointed block recomputing inside its backward: already here
            if index == 0:
                self._start_pass(k)
        self.transfer.wait((k, index))
        if not part.resident[index]:
            raise RuntimeError(
                f"block swap: block {index} of {part.path} runs while its weights are in host memory; the "
                "blocks of a list must run in order, each once per pass"
            )

    def after(self, k: int, index: int, *, backward: bool) -> None:
        """Block ``index`` of list ``k`` ran: start the exchange the schedule makes now."""
        part = self.lists[k]
        if backward:
            move = backward_move(len(part.blocks), part.swapped, index)
        elif _in_backward():
            return
        else:
            move = forward_move(len(part.blocks), part.swapped, index, forward_only=part.forward_only)
        if move is not None:
            self._exchange(k, *move)

    def _exchange(self, k: int, outgoing: int, incoming: int) -> None:
        part = self.lists[k]
        if not part.resident[outgoing] or part.resident[incoming]:
            raise RuntimeError(
                f"block swap: cannot exchange block {outgoing} for block {incoming} of {part.path} "
                f"(on the device: {[i for i, r in enumerate(part.resident) if r]})"
            )
        self.transfer.swap((k, incoming), k, part.weights[outgoing], part.weights[incoming])
        part.resident[outgoing], part.resident[incoming] = False, True

    def _start_pass(self, k: int) -> None:
        part = self.lists[k]
        grad = torch.is_grad_enabled()
        part.forward_only = not (self.training and grad)
        self._check_placement(k)
        if self.training and grad and any(p.requires_grad for ws in part.weights for p in ws):
            raise NotSupportedError(
                f"--blocks_to_swap: the Linear weights of {part.path} are being trained; block swap keeps "
                "them frozen in host memory between uses. Train a network (--network_module) on them "
                "or leave block swap off"
            )
        if part.resident != part.start:
            self._restart(k)

    def _restart(self, k: int) -> None:
        """Put list ``k``'s blocks back where passes start (after a pass that ended early), synchronously."""
        part = self.lists[k]
        self.transfer.synchronize()
        extra = [i for i, (now, wanted) in enumerate(zip(part.resident, part.start)) if now and not wanted]
        missing = [i for i, (now, wanted) in enumerate(zip(part.resident, part.start)) if wanted and not now]
        for outgoing, incoming in zip(extra, missing):
            self._exchange(k, outgoing, incoming)
            self.transfer.wait((k, incoming))
        log.debug("block swap: %s put back where passes start (%d blocks moved)", part.path, len(missing))

    def _check_placement(self, k: int) -> None:
        """Refuse to run when something moved list ``k``'s weights behind block swap's back."""
        part = self.lists[k]
        for index, weights in enumerate(part.weights):
            if any(self.transfer.is_resident(p) != part.resident[index] for p in weights):
                raise RuntimeError(
                    f"block swap: block {index} of {part.path} was moved after block swap placed it "
                    "(model.to(device), or accelerate's device placement: prepare the model with "
                    "device_placement=[False]; keep it out of Components.offload)"
                )

    def set_training(self, training: bool) -> None:
        """Switch between the training (forward and backward) and inference (forward only) schedules."""
        if training == self.training:
            return
        if training:
            for part in self.lists:
                if part.swapped > list_capacity(len(part.blocks), training=True):
                    raise ConfigError(
                        f"block swap: {part.swapped} blocks of {part.path} swap, more than training allows "
                        f"({list_capacity(len(part.blocks), training=True)})"
                    )
        self.transfer.synchronize()
        self.training = training
        for k, part in enumerate(self.lists):
            if part.resident != part.start:
                self._restart(k)

    def synchronize(self) -> None:
        """Finish every transfer under way (before reading parked weights on the host, or timing)."""
        self.transfer.synchronize()

    def resident_blocks(self, k: int) -> list[int]:
        """Indices of list ``k``'s blocks whose weights are on the device (or arriving)."""
        return [i for i, r in enumerate(self.lists[k].resident) if r]


def _swapped_list(path: str, blocks: list[nn.Module], swapped: int) -> SwappedList:
    weights = [swap_weights(block) for block in blocks]
    if swapped > 0:
        first = [(tuple(p.shape), p.dtype) for p in weights[0]]
        for index, ws in enumerate(weights):
            if [(tuple(p.shape), p.dtype) for p in ws] != first:
                raise PluginError(
                    f"block swap: block {index} of {path} has other Linear weights than block 0; block swap "
                    "exchanges the weights of alike blocks"
                )
    part = SwappedList(path, blocks, weights, swapped, resident=[])
    part.resident = part.start
    return part


def _move_except(model: nn.Module, device: torch.device, keep: set[int]) -> None:
    """Move every parameter and buffer of ``model`` to ``device`` except those in ``keep`` (by id)."""
    for module in model.modules():
        for param in module._parameters.values():
            if param is not None and id(param) not in keep and param.device != device:
                param.data = param.data.to(device)
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.device != device:
                module._buffers[name] = buffer.to(device)


def enable_block_swap(
    model: nn.Module, layout: ModelLayout, settings: MemorySettings, device: torch.device | str
) -> BlockSwapper:
    """Place ``model`` for block swap on ``device`` and return its :class:`BlockSwapper`.

    The model may come on the host (best: nothing but the resident part is ever on the GPU) or on the
    device. Block hooks are not installed here (:func:`~tuner_core.memory.apply.apply_memory_strategies`
    does that, or :func:`~tuner_core.memory.blocks.install_block_hooks` with a :class:`BlockSwap`).
    """
    device = torch.device(device)
    check_block_swap_device(settings, device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if block_swappers(model):
        raise PluginError("block swap is already enabled on this model")
    blocks = [
        declared_blocks(model, attrs.evolve(layout, block_lists=(path,))) for path in layout.block_lists
    ]
    split = check_blocks_to_swap(
        settings.blocks_to_swap, layout, [len(b) for b in blocks], training=settings.training
    )
    if settings.use_pinned_memory_for_block_swap and device.type != "cuda":
        log.warning(
            "--use_pinned_memory_for_block_swap: there is no CUDA device, so nothing is pinned (the CPU is "
            "both the compute and the offload device)"
        )
    transfer = WeightTransfer(device, pinned=settings.use_pinned_memory_for_block_swap)
    parts = [_swapped_list(path, b, s) for path, b, s in zip(layout.block_lists, blocks, split)]
    parked = [p for part in parts for ws, on in zip(part.weights, part.start) if not on for p in ws]
    transfer.park(parked)  # first, so a model loaded on the device frees that memory before the rest moves
    _move_except(model, device, {id(p) for p in parked})
    swapper = BlockSwapper(parts, transfer, training=settings.training)
    model.__dict__[_SWAPPER] = swapper
    for k, part in enumerate(parts):
        for index, block in enumerate(part.blocks if part.swapped else ()):
            block.__dict__[_SLOT] = (swapper, k, index)
    host_bytes = sum(p.numel() * p.element_size() for p in parked)
    log.info(
        "block swap: %d blocks (%s), %s mode, %.2f GiB of Linear weights in %s host memory",
        settings.blocks_to_swap,
        ", ".join(f"{s} of {len(part.blocks)} in {part.path}" for s, part in zip(split, parts)),
        "training" if settings.training else "inference",
        host_bytes / 2**30,
        "pinned" if transfer.pinned else "pageable",
    )
    return swapper


def block_swappers(model: nn.Module) -> list[BlockSwapper]:
    """The block swappers of ``model`` and the modules inside it (it may be wrapped: DDP, compile)."""
    return [m.__dict__[_SWAPPER] for m in model.modules() if _SWAPPER in m.__dict__]


def switch_to_inference(model: nn.Module) -> None:
    """Use the forward-only schedule (before samples taken while training); no-op without block swap."""
    for swapper in block_swappers(model):
        swapper.set_training(False)


def switch_to_training(model: nn.Module) -> None:
    """Use the forward-and-backward schedule again (after the samples); no-op without block swap."""
    for swapper in block_swappers(model):
        swapper.set_training(True)


def synchronize_block_swap(model: nn.Module) -> None:
    """Wait for every transfer under way (before reading parked weights on the host: ``state_dict``)."""
    for swapper in block_swappers(model):
        swapper.synchronize()


class BlockSwap(MemoryStrategy):
    """``--blocks_to_swap N`` and ``--use_pinned_memory_for_block_swap`` for any declared block lists.

    Ordered after the strategies that change weights (fp8), so it moves the weights they leave. Mode
    switches: :meth:`switch_to_inference` / :meth:`switch_to_training` (module functions of the same names).
    """

    name: ClassVar[str] = "block-swap"
    order: ClassVar[int] = 90
    switch_to_inference = staticmethod(switch_to_inference)
    switch_to_training = staticmethod(switch_to_training)

    def enabled(self, settings: MemorySettings) -> bool:
        """Whenever blocks are to swap, in training and in inference."""
        return settings.blocks_to_swap > 0

    def check(self, settings: MemorySettings) -> None:
        """Block swap needs a CUDA GPU (tests set ``TUNER_BLOCK_SWAP_CPU=1``)."""
        check_block_swap_device(settings)

    def apply(
        self, model: nn.Module, layout: ModelLayout, settings: MemorySettings, device: torch.device
    ) -> None:
        """Park the swapped blocks' Linear weights on the host and move the rest of the model to ``device``."""
        enable_block_swap(model, layout, settings, device)

    def before_block(self, index: int, block: nn.Module, *, backward: bool) -> None:
        """Wait for the block's weights."""
        slot = block.__dict__.get(_SLOT)
        if slot is not None:
            swapper, k, local = slot
            swapper.before(k, local, backward=backward)

    def after_block(self, index: int, block: nn.Module, *, backward: bool) -> None:
        """Start the next exchange."""
        slot = block.__dict__.get(_SLOT)
        if slot is not None:
            swapper, k, local = slot
            swapper.after(k, local, backward=backward)
