"""FramePack's flow-matching UniPC: a multistep predictor-corrector in data prediction (x0) form.

This follows ``FlowMatchUniPC`` from FramePack (``diffusers_helper/k_diffusion/uni_pc_fm.py``), which is
*not* diffusers' ``UniPCMultistepScheduler``: it works in ``lambda = -ln(sigma)`` with the flow-matching
base step ``x_t = (t/a) x - expm1(-h) x0_a`` (the exact DDIM/Euler step for a constant x0), instead of
diffusers' ``ln((1-sigma)/sigma)`` with ``alpha = 1 - sigma``.

Per step from sigma ``a`` to ``t`` at order ``p`` (p = 1, 2, 3, ... ramping up to ``min(3, steps - 1)``):

* ``h = ln(a/t)``; the earlier predictions give ``r_k = (lambda_k - lambda_a) / h`` and divided differences
  ``D_k = (x0_k - x0_a) / r_k``.
* ``b_j`` come from the phi-function recursion, scaled by ``B(h)`` (``-h`` for ``bh1``, ``expm1(-h)`` for
  ``bh2``); ``R`` is the Vandermonde matrix of ``[r_1 .. r_{p-1}, 1]``.
* predictor: ``x_pred = base - B * sum(rho_p D)`` with ``rho_p = 0.5`` at p = 2 and ``R[:-1,:-1] rho = b[:-1]``
  above; the one model call is ``x0_t = denoise(x_pred, t)``.
* corrector (UniC): ``x = base - B * (sum(rho_c[:-1] D) + rho_c[-1] (x0_t - x0_a))`` with ``rho_c = 0.5``
  at p = 1 and ``R rho = b`` above.

As in the official sampler, the last sigma of the schedule (normally 0) is never evaluated: the result
is the data prediction at ``sigmas[-2]``, and the corrected ``x`` of the last step is not used.

Precision (a deliberate difference): the scalar coefficients are computed in float64 on the CPU from
the given sigma values, while the official code computes them in the sigmas' dtype (float32 in
FramePack). Its phi recursion divides by ``h`` repeatedly, so in float32 ``b_3`` loses all precision for
the small first steps of a shifted schedule; float64 keeps it exact and avoids per-step device syncs.
The latent arithmetic runs in float32 (float64 for float64 latents) on the latents' device, as the
official code does with its float32 latents.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from tuner_core.sampling.flow import Denoiser, StepCallback, schedule_values, working_dtype

#: The accepted ``variant`` values: the two choices of ``B(h)``.
UNIPC_VARIANTS = ("bh1", "bh2")
#: The highest multistep order the official sampler uses.
MAX_ORDER = 3

__all__ = ["UNIPC_VARIANTS", "sample_unipc"]


class _Weights(NamedTuple):
    """The scalar coefficients of one UniPC step."""

    carry: float  # t / a: the share of x that survives the step
    phi1: float  # expm1(-h): minus the weight of the last prediction in the base step
    b_h: float  # B(h) of the variant
    ratios: list[float]  # r_k of the earlier predictions, most recent first
    predictor: list[float]  # rho_p, one per r_k
    corrector: list[float]  # rho_c, one per r_k plus one for the new prediction


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    return torch.linalg.solve(
        torch.tensor(matrix, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64)
    ).tolist()


def _step_weights(history: list[float], t: float, order: int, variant: str) -> _Weights:
    """Coefficients for the step from ``history[-1]`` to ``t`` using the last ``order`` sigmas (float64)."""
    a = history[-1]
    lambda_a = -math.log(a)
    h = -math.log(t) - lambda_a
    ratios = [(-math.log(history[-(k + 1)]) - lambda_a) / h for k in range(1, order)]
    hh = -h
    phi1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else math.expm1(hh)
    # b_j = j! * hh * phi_{j+1}(hh) / B(h); the loop variable holds hh * phi_{j+1}(hh), stepped with
    # phi_{k+1}(x) = (phi_k(x) - 1/k!) / x from phi_1(x) = expm1(x) / x.
    b, phi_k, factorial = [], phi1 / hh - 1, 1
    for j in range(1, order + 1):
        b.append(phi_k * factorial / b_h)
        factorial *= j + 1
        phi_k = phi_k / hh - 1 / factorial
    nodes = [*ratios, 1.0]
    vandermonde = [[r ** (j - 1) for r in nodes] for j in range(1, order + 1)]
    if order == 1:
        predictor: list[float] = []
    elif order == 2:
        predictor = [0.5]  # the official fixed second-order predictor weight
    else:
        predictor = _solve([row[:-1] for row in vandermonde[:-1]], b[:-1])
    corrector = [0.5] if order == 1 else _solve(vandermonde, b)
    return _Weights(t / a, phi1, b_h, ratios, predictor, corrector)


def _weighted_sum(terms: list[torch.Tensor], weights: list[float]) -> torch.Tensor | float:
    total: torch.Tensor | float = 0.0
    for term, weight in zip(terms, weights):
        total = total + weight * term
    return total


def _unipc_step(
    denoise: Denoiser,
    x: torch.Tensor,
    history: list[tuple[float, torch.Tensor]],
    t: float,
    sigma: torch.Tensor,
    order: int,
    variant: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One predictor-corrector step to ``t``: returns the corrected x and the prediction at the predictor."""
    w = _step_weights([s for s, _ in history[-order:]], t, order, variant)
    x0_a = history[-1][1]
    diffs = [(history[-(k + 1)][1] - x0_a) / r for k, r in enumerate(w.ratios, start=1)]
    base = w.carry * x - w.phi1 * x0_a
    x_pred = base - w.b_h * _weighted_sum(diffs, w.predictor) if diffs else base
    x0_t = denoise(x_pred, sigma).to(x.dtype)
    correction = _weighted_sum(diffs, w.corrector[:-1]) + w.corrector[-1] * (x0_t - x0_a)
    return base - w.b_h * correction, x0_t


def sample_unipc(
    denoise: Denoiser,
    latents: torch.Tensor,
    sigmas: torch.Tensor | list[float],
    *,
    variant: str = "bh1",
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Integrate from ``latents`` at ``sigmas[0]`` with FramePack's flow-matching UniPC.

    :param denoise: ``denoise(x, sigma) -> x0``, called exactly once per step (``len(sigmas) - 1`` times).
    :param latents: the start, usually pure noise at ``sigmas[0] = 1``.
    :param sigmas: the ``steps + 1`` noise levels, decreasing (see :func:`shifted_sigmas`); the last one
        is never evaluated.
    :param variant: ``"bh1"`` (FramePack's default) or ``"bh2"``, the choice of ``B(h)``.
    :param callback: ``callback(step, total, x0)`` after each step.
    :returns: the data prediction at ``sigmas[-2]``, in float32 (float64 for float64 latents).
    :raises ValueError: for an unknown variant or an unusable schedule.
    """
    if variant not in UNIPC_VARIANTS:
        raise ValueError(f"unknown UniPC variant {variant!r}; choose one of: {', '.join(UNIPC_VARIANTS)}")
    values = schedule_values(sigmas)
    steps = len(values) - 1
    dtype = working_dtype(latents)
    levels = torch.tensor(values[:-1], dtype=dtype, device=latents.device)
    # The official rule: order min(3, steps - 1), reached by ramping 1, 2, 3 over the first steps and
    # kept to the end (no lowered order for the final steps).
    max_order = max(min(MAX_ORDER, steps - 1), 1)
    x = latents.to(dtype)
    history = [(values[0], denoise(x, levels[0]).to(dtype))]
    if callback is not None:
        callback(0, steps, history[-1][1])
    for i in range(1, steps):
        x, x0 = _unipc_step(denoise, x, history, values[i], levels[i], min(i, max_order), variant)
        history = [*history, (values[i], x0)][-max_order:]
        if callback is not None:
            callback(i, steps, x0)
    return history[-1][1]
