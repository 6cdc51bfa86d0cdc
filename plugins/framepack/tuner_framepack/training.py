"""One FramePack training forward: the cached section context fed to the packed DiT."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from tuner_core import FP8_DTYPES

HISTORY = (
    ("latents_clean_2x", "clean_latent_2x_indices", 2),
    ("latents_clean_4x", "clean_latent_4x_indices", 16),
)


def predict(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    options: Any,
) -> torch.Tensor:
    """The DiT's velocity for one batch of cached sections.

    Distilled guidance is ``--guidance_scale * 1000`` (1000 by default), as in the reference trainer.
    One-frame caches hold 2x/4x indices without latents; their history is zeros, as the reference makes it.
    """
    dtype = next(model.parameters()).dtype
    dtype = torch.float32 if dtype in FP8_DTYPES else dtype

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if t.is_floating_point() else t

    b, c, _, h, w = noisy_latents.shape
    history: dict[str, torch.Tensor | None] = {}
    for latent_key, index_key, frames in HISTORY:
        indices = batch.get(index_key)
        latents = batch.get(latent_key)
        if indices is not None and latents is None:
            latents = torch.zeros(b, c, frames, h, w, device=noisy_latents.device)
        history[latent_key] = cast(latents) if latents is not None else None
        history[index_key] = indices
    guidance = torch.full((b,), float(options.guidance_scale) * 1000.0, device=noisy_latents.device)
    return model(
        hidden_states=cast(noisy_latents),
        timestep=timesteps,
        encoder_hidden_states=cast(batch["llama_vec"]),
        encoder_attention_mask=batch["llama_attention_mask"],
        pooled_projections=cast(batch["clip_l_pooler"]),
        guidance=cast(guidance),
        latent_indices=batch["latent_indices"],
        clean_latents=cast(batch["latents_clean"]),
        clean_latent_indices=batch["clean_latent_indices"],
        clean_latents_2x=history["latents_clean_2x"],
        clean_latent_2x_indices=history["clean_latent_2x_indices"],
        clean_latents_4x=history["latents_clean_4x"],
        clean_latent_4x_indices=history["clean_latent_4x_indices"],
        image_embeddings=cast(batch["image_embeddings"]),
    )
