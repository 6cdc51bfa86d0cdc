"""One denoiser call of a section: the DiT's velocity turned into a data (x0) prediction, with CFG.

The wrapping itself is the core's (:func:`tuner_core.sampling.flow_denoiser`, the official ``fm_wrapper``):
the latents, the timestep ``sigma * 1000`` and the distilled guidance ``embedded_cfg_scale * 1000`` go to
the model in its dtype (10 -> 9984 in bfloat16), real CFG runs a negative pass only when
``guidance_scale`` is not 1, and ``x0 = x - sigma * v``. This module supplies FramePack's conditioning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import torch

from tuner_core.sampling import Denoiser, flow_denoiser
from tuner_framepack.generation.conditioning import SectionConditioning
from tuner_framepack.generation.section_plan import CleanContext

if TYPE_CHECKING:  # the encoders package imports transformers; only the type is needed here
    from tuner_framepack.encoders.text_encoding import PromptEmbeddings

#: The DiT (or anything with its keyword interface): ``predict_velocity(hidden_states=..., timestep=...,
#: encoder_hidden_states=..., ...)`` -> velocity ``(B, C, T, h, w)``; see ``HunyuanVideoTransformer3DModelPacked``.
VelocityModel = Callable[..., torch.Tensor]
#: ``solver(denoise, noise, sigmas)`` -> the section's clean latents (UniPC returns its last x0): one of the
#: core's solvers (:data:`tuner_core.sampling.SOLVERS`) with its options bound.
SectionSolver = Callable[[Denoiser, torch.Tensor, torch.Tensor], torch.Tensor]


@attrs.frozen
class ModelCallSettings:
    """How the DiT is called at each step.

    :param dtype: the model's compute dtype; latents, text, image and guidance are cast to it.
    :param embedded_cfg_scale: ``--embedded_cfg_scale``, the distilled guidance (x1000 for the model).
    :param guidance_scale: ``--guidance_scale``, real CFG; 1.0 skips the negative pass.
    :param guidance_rescale: ``--guidance_rescale``: match the CFG velocity's std to the positive one.
    """

    dtype: torch.dtype = torch.bfloat16
    embedded_cfg_scale: float = 10.0
    guidance_scale: float = 1.0
    guidance_rescale: float = 0.0


def section_model_kwargs(
    conditioning: SectionConditioning,
    prompt: PromptEmbeddings,
    context: CleanContext,
    settings: ModelCallSettings,
    device: torch.device | str,
) -> dict[str, Any]:
    """The DiT keyword arguments of one pass (all but ``hidden_states``, ``timestep`` and ``guidance``, which
    the flow-matching wrapper supplies), on ``device``."""

    def cast(tensor: torch.Tensor, dims: int) -> torch.Tensor:
        tensor = tensor.unsqueeze(0) if tensor.dim() == dims - 1 else tensor
        return tensor.to(device=device, dtype=settings.dtype if tensor.is_floating_point() else tensor.dtype)

    indices = context.indices
    return {
        "encoder_hidden_states": cast(prompt.llama_vec, 3),
        "encoder_attention_mask": cast(prompt.llama_attention_mask, 2),
        "pooled_projections": cast(prompt.clip_l_pooler, 2),
        "latent_indices": indices.latent_indices.to(device),
        "clean_latents": cast(context.clean_latents, 5),
        "clean_latent_indices": indices.clean_latent_indices.to(device),
        "clean_latents_2x": cast(context.clean_latents_2x, 5),
        "clean_latent_2x_indices": _optional_to(indices.clean_latent_2x_indices, device),
        "clean_latents_4x": cast(context.clean_latents_4x, 5),
        "clean_latent_4x_indices": _optional_to(indices.clean_latent_4x_indices, device),
        "image_embeddings": cast(conditioning.image.image_embeddings, 3),
    }


def make_denoise(
    predict_velocity: VelocityModel,
    conditioning: SectionConditioning,
    context: CleanContext,
    settings: ModelCallSettings,
    *,
    device: torch.device | str,
) -> Denoiser:
    """The x0-predicting denoiser of one section, for the solver: the core's flow-matching wrapper
    (:func:`tuner_core.sampling.flow_denoiser`) around the DiT with this section's conditioning.

    :raises ValueError: real CFG is on but ``conditioning`` has no negative prompt.
    """
    kwargs = {True: section_model_kwargs(conditioning, conditioning.prompt, context, settings, device)}
    if settings.guidance_scale != 1.0:
        if conditioning.negative is None:
            raise ValueError("guidance_scale != 1 runs real CFG, which needs the encoded negative prompt")
        kwargs[False] = section_model_kwargs(conditioning, conditioning.negative, context, settings, device)

    def velocity(x: torch.Tensor, *, timestep: torch.Tensor, guidance: torch.Tensor | None, positive: bool):
        return predict_velocity(hidden_states=x, timestep=timestep, guidance=guidance, **kwargs[positive])

    return flow_denoiser(
        velocity,
        cfg_scale=settings.guidance_scale,
        guidance_rescale=settings.guidance_rescale,
        embedded_guidance=settings.embedded_cfg_scale,
        model_dtype=settings.dtype,
    )


def _optional_to(tensor: torch.Tensor | None, device: torch.device | str) -> torch.Tensor | None:
    """Move an optional index tensor."""
    return None if tensor is None else tensor.to(device)
