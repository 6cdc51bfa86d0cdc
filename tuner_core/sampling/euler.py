"""The plain flow-matching Euler solver, driven by a data prediction (x0) denoiser.

Each step turns the prediction into the velocity ``v = (x - x0) / sigma`` and moves
``x_next = x + (sigma_next - sigma) * v``: diffusers' ``FlowMatchEulerDiscreteScheduler`` update, and the
first-order base step of FramePack's UniPC.
"""

from __future__ import annotations

import torch

from tuner_core.sampling.flow import Denoiser, StepCallback, schedule_values, working_dtype

__all__ = ["sample_euler"]


def sample_euler(
    denoise: Denoiser,
    latents: torch.Tensor,
    sigmas: torch.Tensor | list[float],
    *,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Integrate from ``latents`` at ``sigmas[0]`` down to ``sigmas[-1]`` with Euler steps.

    :param denoise: ``denoise(x, sigma) -> x0``, called exactly once per step (``len(sigmas) - 1`` times).
    :param latents: the start, usually pure noise at ``sigmas[0] = 1``.
    :param sigmas: the ``steps + 1`` noise levels, decreasing (see :func:`shifted_sigmas`).
    :param callback: ``callback(step, total, x0)`` after each step.
    :returns: ``x`` at ``sigmas[-1]`` in float32 (float64 for float64 latents). When the schedule ends at
        0, as it normally does, the last step lands exactly on the last data prediction (the one at
        ``sigmas[-2]``), which is returned as is: the same quantity :func:`sample_unipc` returns.
    :raises ValueError: for an unusable schedule.
    """
    values = schedule_values(sigmas)
    steps = len(values) - 1
    dtype = working_dtype(latents)
    levels = torch.tensor(values[:-1], dtype=dtype, device=latents.device)
    x = latents.to(dtype)
    for i in range(steps):
        sigma, sigma_next = values[i], values[i + 1]
        x0 = denoise(x, levels[i]).to(dtype)
        if sigma_next == 0:
            # x + (0 - sigma) * (x - x0) / sigma is x0; taking it directly skips the rounding of that detour.
            x = x0
        else:
            x = x + (sigma_next - sigma) * ((x - x0) / sigma)
        if callback is not None:
            callback(i, steps, x0)
    return x
