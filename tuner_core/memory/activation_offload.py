"""Activation offload: the tensors gradient checkpointing keeps wait on the host until backward.

With gradient checkpointing a block keeps only its inputs between forward and backward; the backward runs
the block's forward again from them. :class:`ActivationOffload` is a pair of saved-tensor hooks that move
those inputs to the host (``--gradient_checkpointing_cpu_offload``) and bring them back to their device
when the recomputation asks for them. The reference (musubi-tuner) does the same by moving every
checkpointed block's output to the CPU; here only what autograd saves moves, so nothing else changes.

A tensor that several blocks receive (the RoPE table, the conditioning vector ``temb``) is copied once per
forward, not once per block. Copies go through pinned memory without blocking when the tensor is on a CUDA
device; a tensor already on the offload device stays where it is (on a CPU-only machine nothing moves).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import torch


@attrs.define
class OffloadCounts:
    """What an :class:`ActivationOffload` did, for logs and tests."""

    #: Saved tensors handed to :meth:`ActivationOffload.offload` (one per block input, per forward).
    offloaded: int = 0
    #: Distinct tensors copied to the offload device (shared inputs count once).
    copied: int = 0
    #: Bytes of those copies: what the compute device no longer holds until backward.
    copied_bytes: int = 0
    #: Saved tensors brought back by :meth:`ActivationOffload.restore` (one per recomputed block input).
    restored: int = 0


@attrs.define(eq=False)
class Offloaded:
    """What autograd keeps in place of a saved tensor: its copy on the offload device."""

    #: The copy (or the tensor itself, when it already was on the offload device).
    stored: torch.Tensor
    #: Where the tensor lived, so :meth:`ActivationOffload.restore` puts it back there.
    device: torch.device
    #: Recorded after a non-blocking device-to-host copy; ``None`` when the copy was synchronous.
    copied: Any = None


class ActivationOffload:
    """Saved-tensor hooks that keep saved tensors on ``device`` (the CPU) until backward needs them.

    Use :meth:`hooks` around the call that saves the tensors (a non-reentrant
    :func:`torch.utils.checkpoint.checkpoint` saves its inputs under the hooks in force around it, and
    what the block saves inside under its own hooks, so only the inputs move).
    """

    def __init__(
        self,
        device: torch.device | str = "cpu",
        *,
        pin_memory: bool | None = None,
        always_copy: bool = False,
    ) -> None:
        """:param device: where saved tensors wait.
        :param pin_memory: stage CUDA copies in pinned host memory (default: whenever CUDA is available).
        :param always_copy: copy even tensors already on ``device`` (tests on a machine with one device
            use it to run the copy and restore path).
        """
        self.device = torch.device(device)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.always_copy = always_copy
        self.counts = OffloadCounts()
        # id(tensor) -> (weak reference to it, its version, its copy): one copy per shared input.
        self._copies: dict[int, tuple[weakref.ref, int, Offloaded]] = {}

    @contextmanager
    def hooks(self) -> Iterator[None]:
        """While in force, tensors autograd saves go through :meth:`offload` and come back by :meth:`restore`."""
        with torch.autograd.graph.saved_tensors_hooks(self.offload, self.restore):
            yield

    def offload(self, tensor: torch.Tensor) -> Offloaded:
        """The pack hook: copy ``tensor`` to the offload device, or reuse the copy made earlier."""
        self.counts.offloaded += 1
        known = self._copies.get(id(tensor))
        if known is not None and known[0]() is tensor and known[1] == tensor._version:
            return known[2]
        packed = self._copy(tensor)
        if packed.stored is tensor:
            return packed  # nothing copied; remembering it would keep the tensor alive
        key = id(tensor)

        def forget(_: weakref.ref, key: int = key) -> None:
            entry = self._copies.get(key)
            if entry is not None and entry[0]() is None:
                del self._copies[key]

        self._copies[key] = (weakref.ref(tensor, forget), tensor._version, packed)
        return packed

    def restore(self, packed: Offloaded) -> torch.Tensor:
        """The unpack hook: the saved tensor, back on the device it was saved from."""
        self.counts.restored += 1
        if packed.copied is not None:
            packed.copied.synchronize()  # the device-to-host copy is complete (normally long since)
        # A no-op for a tensor that never left its device.
        return packed.stored.to(packed.device, non_blocking=packed.stored.is_pinned())

    def _copy(self, tensor: torch.Tensor) -> Offloaded:
        """A copy of ``tensor`` on the offload device (no copy when it is there already)."""
        if tensor.device == self.device and not self.always_copy:
            return Offloaded(tensor, tensor.device)
        pinned = self.pin_memory and tensor.device.type == "cuda" and self.device.type == "cpu"
        stored = torch.empty(
            tensor.shape, dtype=tensor.dtype, layout=tensor.layout, device=self.device, pin_memory=pinned
        )
        stored.copy_(tensor, non_blocking=pinned)
        event = None
        if pinned:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(tensor.device))
        self.counts.copied += 1
        self.counts.copied_bytes += tensor.numel() * tensor.element_size()
        return Offloaded(stored, tensor.device, event)
