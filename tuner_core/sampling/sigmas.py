"""The inference sigma schedule: ``steps + 1`` noise levels from 1 down to 0, warped by the flux time shift.

This is FramePack's official schedule (``get_flux_sigmas_from_mu`` in its ``sample_hunyuan``): the points of
``linspace(1, 0, steps + 1)`` (float32) go through ``exp(mu) / (exp(mu) + (1/t - 1))``, which keeps 0 at 0.
``mu`` is either ``ln(shift)`` (``--flow_shift``) or, without a shift, follows the FLUX line through
(256 tokens, 0.5) and (4096 tokens, 1.15) at the latent's token count, capped at ``ln 7``.

The warp equals :func:`tuner_core.training.timesteps.shift_sigmas` with ``s = exp(mu)``
(``s*t / (1 + (s-1)*t)``), but it is evaluated here in the official form on purpose: the two forms round
differently in float32 (up to 3 ulp, at roughly half the points of a 25-step schedule), and a one-ulp
difference in sigma can flip the bf16 rounding of the timestep ``sigma * 1000`` that the model sees.
This form reproduces the official schedule bit for bit.
"""

from __future__ import annotations

import math

import torch

from tuner_core.training.timesteps import FLUX_SHIFT_HIGH, FLUX_SHIFT_LOW

#: Upper bound of the resolution-dependent shift ``exp(mu)`` (the official ``exp_max``).
MAX_FLUX_SHIFT = 7.0

__all__ = ["MAX_FLUX_SHIFT", "flux_mu", "shifted_sigmas"]


def flux_mu(seq_len: int) -> float:
    """The resolution-dependent log-shift ``mu`` for ``seq_len`` latent tokens, capped at ``ln 7``.

    Linear through the FLUX anchors (256, 0.5) and (4096, 1.15). It is written as slope and intercept,
    the official arrangement, rather than via ``flux_shift_for_tokens``: the two differ in the last bit of
    a float64 ``mu`` for about one token count in five, and the schedule should match bit for bit.
    """
    (x1, y1), (x2, y2) = FLUX_SHIFT_LOW, FLUX_SHIFT_HIGH
    slope = (y2 - y1) / (x2 - x1)
    intercept = y1 - slope * x1
    return min(slope * seq_len + intercept, math.log(MAX_FLUX_SHIFT))


def shifted_sigmas(steps: int, *, shift: float | None = None, seq_len: int | None = None) -> torch.Tensor:
    """The ``steps + 1`` sigmas of an inference run, from 1.0 down to 0.0 (float32, CPU).

    :param steps: number of sampling steps (at least 1).
    :param shift: the flow shift ``exp(mu)`` (``--flow_shift``); when given it wins over ``seq_len``.
    :param seq_len: latent token count, used for the resolution-dependent ``mu`` when ``shift`` is None
        (FramePack counts ``frames * (h/2) * (w/2)`` of the latent: ``T * H * W // 4``).
    :raises ValueError: for ``steps < 1``, a non-positive shift, or neither ``shift`` nor ``seq_len``.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if shift is not None:
        if not shift > 0:
            raise ValueError(f"the flow shift must be > 0, got {shift!r}")
        mu = math.log(shift)
    elif seq_len is not None:
        mu = flux_mu(seq_len)
    else:
        raise ValueError("shifted_sigmas needs a shift or a seq_len (token count) to derive one from")
    t = torch.linspace(1, 0, steps=int(steps) + 1)
    scale = math.exp(mu)
    # At t = 0, 1/t is inf and the quotient is exactly 0: the schedule ends at pure data without a special case.
    return scale / (scale + (1 / t - 1))
