"""Choosing a flow-matching solver by name (``--sample_solver``)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol

import torch

from tuner_core.sampling.euler import sample_euler
from tuner_core.sampling.flow import Denoiser, StepCallback
from tuner_core.sampling.unipc import sample_unipc

__all__ = ["DEFAULT_SOLVER", "SOLVERS", "Solver", "sample_flow"]


class Solver(Protocol):
    """A solver: integrate ``latents`` along ``sigmas`` with one ``denoise`` call per step."""

    def __call__(
        self,
        denoise: Denoiser,
        latents: torch.Tensor,
        sigmas: torch.Tensor | list[float],
        *,
        callback: StepCallback | None = None,
    ) -> torch.Tensor: ...


#: The solvers by name; ``unipc`` is FramePack's own sampler (variant ``bh1``). Read-only.
SOLVERS: Mapping[str, Solver] = MappingProxyType({"unipc": sample_unipc, "euler": sample_euler})
DEFAULT_SOLVER = "unipc"


def sample_flow(
    denoise: Denoiser,
    latents: torch.Tensor,
    sigmas: torch.Tensor | list[float],
    *,
    solver: str = DEFAULT_SOLVER,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Run the solver named ``solver`` (a key of :data:`SOLVERS`); see that solver for the details.

    :returns: the final data prediction, in float32 (float64 for float64 latents).
    :raises ValueError: for an unknown solver name (the message lists the choices) or an unusable schedule.
    """
    try:
        run = SOLVERS[solver]
    except KeyError:
        raise ValueError(f"unknown sample solver {solver!r}; choose one of: {', '.join(SOLVERS)}") from None
    return run(denoise, latents, sigmas, callback=callback)
