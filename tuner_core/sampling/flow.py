"""What every flow-matching solver shares: the denoiser and progress-callback types, the working dtype, and
the check of a sigma schedule.

Convention (rectified flow, as in training): ``x_sigma = (1 - sigma) * x0 + sigma * noise``; sigma = 1 is
pure noise, sigma = 0 clean data. Solvers work with a *data prediction* denoiser ``denoise(x, sigma) -> x0``
(see :func:`tuner_core.sampling.guidance.flow_denoiser` for building one from a velocity model).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

#: ``denoise(x, sigma) -> x0``: the model's clean-data prediction at noise level ``sigma``. Solvers pass
#: ``sigma`` as a 0-d tensor in the working dtype on the latents' device.
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: ``callback(step, total, x0)``: called after each of the ``total`` steps (``step`` counts from 0) with the
#: newest data prediction, e.g. for a progress bar or a preview.
StepCallback = Callable[[int, int, torch.Tensor], None]

__all__ = ["Denoiser", "StepCallback", "schedule_values", "working_dtype"]


def working_dtype(latents: torch.Tensor) -> torch.dtype:
    """The dtype solver arithmetic runs in: float32, or float64 when the latents already are.

    Half-precision latents are upcast because the solver subtracts nearby predictions (differences of
    x0 across steps), which bf16 would drown in rounding.
    """
    return torch.promote_types(latents.dtype, torch.float32)


def schedule_values(sigmas: torch.Tensor | list[float]) -> list[float]:
    """The sigmas as Python floats after checking they form a usable schedule.

    A schedule has at least two entries (``steps + 1``), all finite, all but the last strictly positive
    (solvers divide by them and take their logarithm), the last at least 0. Reading the values once here
    also keeps the per-step coefficient math off the accelerator, so it does not stall it.

    :raises ValueError: when the schedule breaks one of those rules.
    """
    values = torch.as_tensor(sigmas).detach().reshape(-1).double().cpu().tolist()
    if torch.as_tensor(sigmas).dim() != 1 or len(values) < 2:
        raise ValueError(f"sigmas must be a 1-D schedule of steps + 1 >= 2 values, got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("sigmas must be finite")
    if min(values[:-1]) <= 0 or values[-1] < 0:
        raise ValueError("every sigma but the last must be > 0, and the last must be >= 0")
    return values
