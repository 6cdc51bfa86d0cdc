"""Output head: final modulated LayerNorm and unpatchify of the noisy tokens back to latent frames."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tuner_framepack.dit.layers import modulated_layer_norm


class OutputNorm(nn.Module):
    """``norm_out``: un-affine LayerNorm modulated by ``linear(silu(temb))``, chunked **(scale, shift)**."""

    def __init__(self, dim: int) -> None:
        """:param dim: model width."""
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """Normalise and modulate ``(B, N, dim)`` tokens."""
        scale, shift = self.linear(F.silu(temb).to(x.dtype)).chunk(2, dim=-1)
        return modulated_layer_norm(x, shift, scale)


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int]) -> torch.Tensor:
    """``(B, T'*H'*W', C*pt*ph*pw)`` tokens to ``(B, C, T'*pt, H'*ph, W'*pw)`` latents.

    Each token's values are ordered channel-major ``(c, pt, ph, pw)``.
    """
    frames, height, width = grid
    pt, ph, pw = patch
    batch = tokens.shape[0]
    x = tokens.reshape(batch, frames, height, width, -1, pt, ph, pw)
    x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(batch, x.shape[1], frames * pt, height * ph, width * pw)
