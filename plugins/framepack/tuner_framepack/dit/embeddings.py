"""Input embeddings: noisy-latent patches, the timestep/guidance/pooled-text vector, the SigLIP projection."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: channels of the timestep sinusoid
SINUSOID_DIM = 256


def timestep_sinusoid(t: torch.Tensor, dim: int = SINUSOID_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of ``t`` (shape ``(B,)``, 0-1000 scale) in float32, ordered ``[cos, sin]``.

    Frequencies ``exp(-ln(max_period) * j / (dim/2))`` for ``j < dim/2``, no shift (the diffusers
    ``Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)`` convention).
    """
    half = dim // 2
    # same operation order as the reference, so large arguments (guidance 10000) round identically
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    angles = t.reshape(-1).float()[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class MLPEmbedder(nn.Module):
    """``linear_2(silu(linear_1(x)))``: timestep, guidance and pooled-text embedders."""

    def __init__(self, in_dim: int, dim: int) -> None:
        """:param in_dim: input width; :param dim: model width."""
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed ``x``."""
        return self.linear_2(F.silu(self.linear_1(x)))


class TimeTextEmbedding(nn.Module):
    """The conditioning vector ``temb = (timestep_emb + guidance_emb) + pooled_text_emb``.

    Also used (without guidance) inside the token refiner, where the "pooled text" is the mean LLaMA token.
    """

    def __init__(self, dim: int, pooled_dim: int, guidance: bool) -> None:
        """:param pooled_dim: width of the pooled input; :param guidance: build ``guidance_embedder``."""
        super().__init__()
        self.timestep_embedder = MLPEmbedder(SINUSOID_DIM, dim)
        self.guidance_embedder = MLPEmbedder(SINUSOID_DIM, dim) if guidance else None
        self.text_embedder = MLPEmbedder(pooled_dim, dim)

    def forward(
        self, timestep: torch.Tensor, pooled: torch.Tensor, guidance: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, dim)`` conditioning vector; the sinusoids are cast to the pooled input's dtype."""
        temb = self.timestep_embedder(timestep_sinusoid(timestep).to(pooled.dtype))
        if self.guidance_embedder is not None:
            if guidance is None:
                raise ValueError(
                    "this DiT has a distilled-guidance embedder: pass guidance (the embedded CFG scale x 1000)"
                )
            temb = temb + self.guidance_embedder(timestep_sinusoid(guidance).to(pooled.dtype))
        return temb + self.text_embedder(pooled)


class ImageProjection(nn.Module):
    """SigLIP tokens to model width: ``down(silu(up(x)))`` with a 3x-wide hidden layer."""

    def __init__(self, in_dim: int, dim: int) -> None:
        """:param in_dim: SigLIP hidden size; :param dim: model width."""
        super().__init__()
        self.up = nn.Linear(in_dim, dim * 3)
        self.down = nn.Linear(dim * 3, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``(B, N, in_dim)`` tokens."""
        return self.down(F.silu(self.up(x)))


class PatchEmbed(nn.Module):
    """Noisy latents to tokens: a Conv3d with kernel = stride = patch, flattened in (t, h, w) raster order."""

    def __init__(self, patch: tuple[int, int, int], in_channels: int, dim: int) -> None:
        """:param patch: ``(pt, ph, pw)``."""
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=patch, stride=patch)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` -> ``(B, T*H/ph*W/pw, dim)`` (a transposed view)."""
        return self.proj(latents).flatten(2).transpose(1, 2)
