"""Peak tensor memory of a call, on CPU or GPU, for tests and benchmarks of the VAE memory options.

On CUDA it is the allocator's peak. On CPU there is no allocator counter, so the call runs under the
PyTorch profiler with memory recording and the peak is the highest running sum of its allocation and free
events: the most tensor memory that was alive at once during the call (inputs allocated before it excluded).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch.profiler import ProfilerActivity, profile

T = TypeVar("T")


def peak_memory(fn: Callable[[], T], device: torch.device | str = "cpu") -> tuple[int, T]:
    """Run ``fn`` and return (peak bytes of tensor memory it allocated on ``device``, its result)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, result
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        # host events only: on a CUDA machine the GPU allocator's events are recorded too
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    alive = peak = 0
    for _, nbytes in events:
        alive += nbytes
        peak = max(peak, alive)
    return peak, result
