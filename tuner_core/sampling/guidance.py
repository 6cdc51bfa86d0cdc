"""From a velocity model to the x0 denoiser the solvers use, with classifier-free guidance.

This is what FramePack's ``fm_wrapper`` (``diffusers_helper/k_diffusion/wrapper.py``) does per call, kept
free of any model: the architecture supplies ``predict_velocity`` with its own conditioning.

* The model sees ``timestep = sigma * 1000`` and, for guidance-distilled models, ``guidance =
  embedded_guidance * 1000`` (both cast to the model dtype when one is given: in FramePack bf16, which
  quantises them, e.g. 10 -> 9984).
* Real CFG ``v = v_neg + cfg * (v_pos - v_neg)`` runs the negative pass only when ``cfg_scale != 1``.
* ``guidance_rescale`` blends in the guided velocity rescaled to the std of the positive one.
* The result is ``x0 = x - sigma * v`` in float32.
"""

from __future__ import annotations

from typing import Protocol

import torch

from tuner_core.sampling.flow import Denoiser

#: The model's timestep (and distilled guidance) scale: ``timestep = sigma * 1000``, as in training.
TIMESTEP_SCALE = 1000.0

__all__ = ["TIMESTEP_SCALE", "VelocityModel", "flow_denoiser", "rescale_guidance"]


class VelocityModel(Protocol):
    """One model pass: the velocity ``noise - x0`` for input ``x`` of shape (B, ...).

    :param timestep: ``sigma * 1000``, shape (B,).
    :param guidance: the distilled guidance ``embedded_guidance * 1000``, shape (B,); None when not used.
    :param positive: True for the prompt's pass, False for the negative (unconditional) pass of CFG.
    """

    def __call__(
        self, x: torch.Tensor, *, timestep: torch.Tensor, guidance: torch.Tensor | None, positive: bool
    ) -> torch.Tensor: ...


def rescale_guidance(guided: torch.Tensor, positive: torch.Tensor, rescale: float) -> torch.Tensor:
    """Blend ``guided`` with itself rescaled to the std of ``positive`` (the official ``rescale_noise_cfg``).

    The std is per batch element over all other dims (unbiased, as ``Tensor.std``); ``rescale = 0``
    returns ``guided`` untouched, ``rescale = 1`` the fully rescaled prediction. Strong CFG inflates the
    prediction's scale; this pulls it back towards the unguided one.
    """
    if rescale == 0:
        return guided
    dims = list(range(1, positive.ndim))
    matched = guided * (positive.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return rescale * matched + (1.0 - rescale) * guided


def _per_sample(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Sigma as a float32 vector of shape (B,) on x's device, from a scalar or a per-sample vector."""
    sigma = torch.as_tensor(sigma, device=x.device).float().reshape(-1)
    return sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma


def flow_denoiser(
    predict_velocity: VelocityModel,
    *,
    cfg_scale: float = 1.0,
    guidance_rescale: float = 0.0,
    embedded_guidance: float | None = None,
    model_dtype: torch.dtype | None = None,
) -> Denoiser:
    """Wrap a velocity model into ``denoise(x, sigma) -> x0`` for the solvers.

    :param predict_velocity: the model call (see :class:`VelocityModel`).
    :param cfg_scale: classifier-free guidance scale; 1.0 makes one model call per step, anything else two.
    :param guidance_rescale: the :func:`rescale_guidance` factor, within [0, 1]; 0 disables it. It only acts
        with CFG: at ``cfg_scale == 1`` the official std ratio is exactly 1, so it is skipped there.
    :param embedded_guidance: distilled guidance scale (FramePack's ``gs``), passed as ``guidance * 1000``;
        None passes ``guidance=None``.
    :param model_dtype: dtype the model input, timestep and guidance are cast to (FramePack: bfloat16);
        None leaves the input as the solver gives it and the timestep in float32. As in the official
        wrapper, ``x0`` is formed from the *cast* input, so that ``x0`` and ``v`` refer to the same ``x``.
    :returns: the denoiser; its x0 has the input's dtype.
    :raises ValueError: when ``guidance_rescale`` is outside [0, 1].
    """
    if not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"guidance_rescale must be within [0, 1], got {guidance_rescale!r}")

    def denoise(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        sigmas = _per_sample(sigma, x)
        model_x = x if model_dtype is None else x.to(model_dtype)
        timestep = (sigmas * TIMESTEP_SCALE).to(model_dtype or torch.float32)
        guidance = None
        if embedded_guidance is not None:
            # float32 first, then the model dtype: the official two roundings (10 -> 10000.0 -> 9984 in bf16).
            guidance = torch.full(
                x.shape[:1], embedded_guidance * TIMESTEP_SCALE, dtype=torch.float32, device=x.device
            )
            guidance = guidance.to(model_dtype or torch.float32)

        def velocity(positive: bool) -> torch.Tensor:
            v = predict_velocity(model_x, timestep=timestep, guidance=guidance, positive=positive)
            return v.float()

        v = velocity(True)
        if cfg_scale != 1.0:
            v_neg = velocity(False)
            v = rescale_guidance(v_neg + cfg_scale * (v - v_neg), v, guidance_rescale)
        calc = torch.promote_types(x.dtype, torch.float32)
        scale = sigmas.to(calc).reshape(-1, *([1] * (x.ndim - 1)))
        return (model_x.to(calc) - v.to(calc) * scale).to(x.dtype)

    return denoise
