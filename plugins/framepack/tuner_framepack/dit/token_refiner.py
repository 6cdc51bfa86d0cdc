"""Text token refiner (``context_embedder``): LLaMA states to model width, refined by self-attention blocks."""

from __future__ import annotations

import torch
from torch import nn

from tuner_core.attention import attention
from tuner_framepack.dit.embeddings import TimeTextEmbedding
from tuner_framepack.dit.layers import NORM_EPS, AdaModulation, FeedForward, gated_residual


class RefinerAttention(nn.Module):
    """Plain multi-head self-attention with biases (keys ``to_q``, ``to_k``, ``to_v``, ``to_out.0``)."""

    def __init__(self, dim: int, heads: int) -> None:
        """:param dim: model width; :param heads: attention heads."""
        super().__init__()
        self.heads = heads
        self.attn_mode = "sdpa"
        self.split_attn = False
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Self-attention over ``(B, L, dim)`` with an optional ``(B, L)`` key-padding mask."""
        q, k, v = (proj(x).unflatten(-1, (self.heads, -1)) for proj in (self.to_q, self.to_k, self.to_v))
        out = attention(
            q, k, v, mode=self.attn_mode, attention_mask=attention_mask, split_attn=self.split_attn
        )
        return self.to_out[0](out.flatten(2))


class RefinerBlock(nn.Module):
    """Affine LayerNorm, self-attention, affine LayerNorm, SiLU MLP; residuals gated by ``norm_out(temb)``."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        """:param mlp_dim: hidden width of the MLP."""
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.attn = RefinerAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.ff = FeedForward(dim, mlp_dim, "silu")
        self.norm_out = AdaModulation(dim, 2)

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Refine ``(B, L, dim)`` tokens."""
        gate_msa, gate_mlp = self.norm_out(temb)
        x = gated_residual(x, self.attn(self.norm1(x), attention_mask), gate_msa)
        return gated_residual(x, self.ff(self.norm2(x)), gate_mlp)


class RefinerStack(nn.Module):
    """The ``token_refiner`` module: a list ``refiner_blocks``."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, layers: int) -> None:
        """:param layers: number of refiner blocks."""
        super().__init__()
        self.refiner_blocks = nn.ModuleList([RefinerBlock(dim, heads, mlp_dim) for _ in range(layers)])


class TokenRefiner(nn.Module):
    """``context_embedder``: conditions on the timestep and the mean text token, then refines the tokens.

    Callers pass text already cropped to the longest valid length; ``attention_mask`` marks the valid
    prefix of each sample when lengths differ (``None`` when all tokens are valid). Valid tokens attend
    to valid tokens only, which is what the reference's pairwise mask does for them.
    """

    def __init__(self, text_dim: int, dim: int, heads: int, mlp_dim: int, layers: int) -> None:
        """:param text_dim: LLaMA hidden size; :param dim: model width."""
        super().__init__()
        self.time_text_embed = TimeTextEmbedding(dim, text_dim, guidance=False)
        self.proj_in = nn.Linear(text_dim, dim)
        self.token_refiner = RefinerStack(dim, heads, mlp_dim, layers)

    def forward(
        self, text: torch.Tensor, timestep: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """``(B, L, text_dim)`` LLaMA states to ``(B, L, dim)`` refined tokens."""
        # mean of the raw valid tokens, in float32
        if attention_mask is None:
            pooled = text.float().mean(dim=1)
        else:
            weights = attention_mask.to(torch.float32)[..., None]
            pooled = (text.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        temb = self.time_text_embed(timestep, pooled.to(text.dtype))
        x = self.proj_in(text)
        for block in self.token_refiner.refiner_blocks:
            x = block(x, temb, attention_mask)
        return x
