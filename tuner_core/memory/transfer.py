"""Moving weight tensors between the compute device and host memory, for block swap.

A :class:`WeightTransfer` owns the copies. Each weight is a ``nn.Parameter`` whose ``.data`` is repointed
(the Parameter object never changes, so optimizers, networks and autograd keep their references):

- *resident*: ``.data`` is a tensor on the compute device;
- *parked*: the values live in host memory. On CUDA ``.data`` is that host tensor. When the compute device
  is the CPU itself (tests), the host copy is kept by the transfer and ``.data`` shows a *stand-in*: a
  zero-memory NaN tensor of the weight's shape and dtype, so a block that ran with a parked weight would
  produce NaN (and :meth:`WeightTransfer.is_resident` tells which is which).

:meth:`WeightTransfer.swap` exchanges two blocks of the same shapes: the outgoing block's values go to a
spare host buffer set, the incoming block's values are copied into the outgoing block's device storage
(no device allocation; a block keeps its storage slot across a forward and backward, see
:mod:`tuner_core.memory.block_swap`), and the incoming block's host buffers become the next spare set.

On CUDA the copies run on a dedicated stream. The copy stream first waits for an event recorded on the
compute stream at submission (the outgoing block's kernels are done before its storage is overwritten),
and records an event after the copies; :meth:`WeightTransfer.wait` makes the compute stream wait for that
event, on the GPU, without blocking the host. With pinned host memory every copy is asynchronous and is
enqueued from the calling thread; with pageable memory the copies block, so they run in one worker
thread. Elsewhere (the CPU as both devices) the same exchange runs synchronously.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import nn

#: Where parked weights live.
HOST = torch.device("cpu")


def _copy(copies: Sequence[tuple[torch.Tensor, torch.Tensor]], *, non_blocking: bool) -> None:
    for destination, source in copies:
        destination.copy_(source, non_blocking=non_blocking)


def stand_in(tensor: torch.Tensor) -> torch.Tensor:
    """A zero-memory NaN tensor with ``tensor``'s shape and dtype (every element is one NaN)."""
    return torch.full((), float("nan"), dtype=tensor.dtype).expand(tensor.shape)


class WeightTransfer:
    """Parks, restores and swaps weights between ``device`` and host memory (see the module doc).

    :param device: the compute device (``cuda[:n]``, or ``cpu`` for the synchronous path).
    :param pinned: keep parked weights in pinned (page-locked) host memory, so host-device copies are
        asynchronous DMA. Only on CUDA; elsewhere nothing is pinned.
    """

    def __init__(self, device: torch.device, *, pinned: bool = False) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.pinned = pinned and self.cuda
        #: id(parameter) -> host copy, while parked with a stand-in (compute device is the host).
        self._parked: dict[int, torch.Tensor] = {}
        self._spare: dict[Hashable, list[torch.Tensor]] = {}
        self._pending: dict[Hashable, Future[torch.cuda.Event] | torch.cuda.Event | None] = {}
        self._stream = torch.cuda.Stream(device=self.device) if self.cuda else None
        self._worker = ThreadPoolExecutor(1, "tuner-block-swap") if self.cuda and not pinned else None

    # -- where a weight is ----------------------------------------------------------------------------

    def is_resident(self, param: torch.Tensor) -> bool:
        """Whether ``param``'s values are on the compute device now."""
        if self.cuda:
            return param.device.type == "cuda"
        return id(param) not in self._parked

    def host_copy(self, param: nn.Parameter) -> torch.Tensor:
        """The host tensor holding a parked ``param``'s values (read it after :meth:`synchronize`).

        Parameters are repointed when a swap starts, so this and :meth:`is_resident` tell where a weight
        is or is going; the values are there once the swap finished.
        """
        return self._parked[id(param)] if not self.cuda else param.data

    def _park(self, param: nn.Parameter, host: torch.Tensor) -> None:
        if self.cuda:
            param.data = host
        else:
            self._parked[id(param)] = host
            param.data = stand_in(host)

    def _unpark(self, param: nn.Parameter) -> torch.Tensor:
        return param.data if self.cuda else self._parked.pop(id(param))

    # -- synchronous placement ------------------------------------------------------------------------

    def park(self, params: Sequence[nn.Parameter]) -> None:
        """Move ``params`` to host memory now, or keep them there (pinned if asked)."""
        for param in params:
            if self.cuda:
                host = param.data.to(HOST)  # no copy when it is on the host already
                param.data = host.pin_memory() if self.pinned and not host.is_pinned() else host
            elif self.is_resident(param):
                self._park(param, param.data)

    def restore(self, params: Sequence[nn.Parameter]) -> None:
        """Bring parked ``params`` to the compute device now."""
        for param in params:
            if not self.is_resident(param):
                param.data = self._unpark(param).to(self.device)

    # -- asynchronous swaps ---------------------------------------------------------------------------

    def swap(
        self,
        key: Hashable,
        group: Hashable,
        outgoing: Sequence[nn.Parameter],
        incoming: Sequence[nn.Parameter],
    ) -> None:
        """Start parking ``outgoing`` (resident) and bringing in ``incoming`` (parked) in its storage.

        ``key`` names the arrival for :meth:`wait`; ``group`` names the spare host buffers (one set per
        group, so use one group per list of alike blocks). The two sequences pair weights one to one
        and must match in shape and dtype.
        """
        copies = self._exchange(group, outgoing, incoming)
        if not self.cuda:
            _copy(copies, non_blocking=False)
            self._pending[key] = None
            return
        ready = torch.cuda.current_stream(self.device).record_event()
        if self._worker is None:  # pinned: every copy is asynchronous, enqueue them here
            self._pending[key] = self._on_copy_stream(ready, copies, non_blocking=True)
        else:  # pageable: the copies block, so a worker thread waits for them
            self._pending[key] = self._worker.submit(self._on_copy_stream, ready, copies, non_blocking=False)

    def _on_copy_stream(
        self, ready: torch.cuda.Event, copies: list[tuple[torch.Tensor, torch.Tensor]], *, non_blocking: bool
    ) -> torch.cuda.Event:
        assert self._stream is not None
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            self._stream.wait_event(ready)  # the compute stream is done with the outgoing storage
            _copy(copies, non_blocking=non_blocking)
            return self._stream.record_event()

    def _exchange(
        self, group: Hashable, outgoing: Sequence[nn.Parameter], incoming: Sequence[nn.Parameter]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Repoint the Parameters now (on the calling thread); return the ``(destination, source)`` copies
        that make it true, in the order they must run: every device -> host copy before the host -> device
        copy that overwrites its source."""
        storage = [p.data for p in outgoing]
        spare = self._spare.pop(group, None) or [self._new_host(t) for t in storage]
        hosts = [self._unpark(p) for p in incoming]
        for dev, host in zip(storage, hosts):
            if dev.shape != host.shape or dev.dtype != host.dtype:
                raise RuntimeError(
                    f"block swap: cannot exchange a {tuple(dev.shape)} {dev.dtype} weight for a "
                    f"{tuple(host.shape)} {host.dtype} one; the blocks of one list must be alike"
                )
        for param, buffer in zip(outgoing, spare):
            self._park(param, buffer)
        for param, dev in zip(incoming, storage):
            param.data = dev  # usable once wait() returned: the compute stream then waits for the copy
        self._spare[group] = hosts  # the next outgoing block's, written after these copies (same stream)
        return [*zip(spare, storage), *zip(storage, hosts)]

    def _new_host(self, like: torch.Tensor) -> torch.Tensor:
        return torch.empty(like.shape, dtype=like.dtype, device=HOST, pin_memory=self.pinned)

    def pending(self, key: Hashable) -> bool:
        """Whether an arrival under ``key`` was started and not yet waited for."""
        return key in self._pending

    def wait(self, key: Hashable) -> None:
        """Make the compute stream wait until the swap started under ``key`` has arrived (no-op if none)."""
        pending = self._pending.pop(key, None)
        if isinstance(pending, Future):
            pending = pending.result()
        if pending is not None:
            torch.cuda.current_stream(self.device).wait_event(pending)

    def synchronize(self) -> None:
        """Finish every started swap, on the host too (parked host copies are then readable)."""
        for key in list(self._pending):
            self.wait(key)
        if self._stream is not None:
            self._stream.synchronize()
            torch.cuda.current_stream(self.device).synchronize()
