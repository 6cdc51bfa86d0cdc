"""The toy architecture's three models: a linear autoencoder, a hashed-word text encoder, a tiny DiT.

Small enough to train on a CPU in seconds, shaped like the real thing: causal 4x temporal / 4x spatial
latents, a padded text sequence with a mask, and a transformer whose repeated blocks sit in a ModuleList.
"""

from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F
from torch import nn

LATENT_CHANNELS = 8
SPATIAL = 4
TEMPORAL = 4
TEXT_TOKENS = 16
TEXT_DIM = 32
VOCAB = 257


class ToyAutoencoder(nn.Module):
    """Pixels (F, 3, H, W) in [-1, 1] <-> latents (C, (F-1)/4+1, H/4, W/4), linear per 4x4 patch."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(3 * SPATIAL * SPATIAL, LATENT_CHANNELS, bias=False)
        self.decoder = nn.Linear(LATENT_CHANNELS, 3 * SPATIAL * SPATIAL, bias=False)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(F, 3, H, W) -> (C, T, H/4, W/4); latent 0 is frame 0, each later latent averages 4 frames."""
        groups = [pixels[:1]] + [pixels[i : i + TEMPORAL] for i in range(1, pixels.shape[0], TEMPORAL)]
        frames = torch.stack([g.mean(0) for g in groups])  # (T, 3, H, W)
        patches = F.pixel_unshuffle(frames, SPATIAL)  # (T, 48, h, w)
        latents = self.encoder(patches.permute(0, 2, 3, 1)).permute(3, 0, 1, 2)
        return latents.contiguous()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(C, T, h, w) -> (4(T-1)+1, 3, 4h, 4w) in [-1, 1]."""
        patches = self.decoder(latents.permute(1, 2, 3, 0)).permute(0, 3, 1, 2)
        frames = F.pixel_shuffle(patches, SPATIAL).clamp(-1, 1)
        return torch.cat([frames[:1], frames[1:].repeat_interleave(TEMPORAL, dim=0)])


def tokenize(caption: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Word ids (hashed into the vocabulary, 0 = padding) and a bool mask, both (TEXT_TOKENS,)."""
    words = caption.lower().split()[:TEXT_TOKENS]
    ids = torch.zeros(TEXT_TOKENS, dtype=torch.long)
    for i, word in enumerate(words):
        ids[i] = 1 + zlib.crc32(word.encode()) % (VOCAB - 1)
    mask = torch.zeros(TEXT_TOKENS, dtype=torch.bool)
    mask[: max(len(words), 1)] = True
    return ids, mask


class ToyTextEncoder(nn.Module):
    """Embeds hashed words; returns the padded token states, their mask and a pooled vector."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, TEXT_DIM)

    @torch.no_grad()
    def forward(self, caption: str) -> dict[str, torch.Tensor]:
        """``text`` (L, D), ``text_mask`` (L,), ``pooled`` (D,)."""
        ids, mask = tokenize(caption)
        states = self.embedding(ids) * mask[:, None]
        pooled = states[mask].mean(0)
        return {"text": states, "text_mask": mask, "pooled": pooled}


def timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of timesteps on the 0-1000 scale, cos first."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=timesteps.device) / half)
    angles = timesteps.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def position_embedding(t: int, h: int, w: int, dim: int, device: torch.device) -> torch.Tensor:
    """Fixed sinusoidal (frame, row, column) embedding of a (t, h, w) token grid, (t*h*w, dim)."""
    parts = []
    side = 2 * (dim // 6)  # even widths: the sinusoid has a cos and a sin half
    for size, width in ((t, dim - 2 * side), (h, side), (w, side)):
        positions = torch.arange(size, device=device, dtype=torch.float32)
        parts.append(timestep_embedding(positions * 100.0, width))  # spread positions over the frequencies
    grid = torch.cat(
        [
            parts[0][:, None, None].expand(t, h, w, -1),
            parts[1][None, :, None].expand(t, h, w, -1),
            parts[2][None, None, :].expand(t, h, w, -1),
        ],
        dim=-1,
    )
    return grid.reshape(t * h * w, dim)


class ToyAttention(nn.Module):
    """Joint attention over image tokens and (masked) text tokens."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        joint = torch.cat([x, context], dim=1)
        q = self.to_q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k = self.to_k(joint).view(b, joint.shape[1], self.heads, -1).transpose(1, 2)
        v = self.to_v(joint).view(b, joint.shape[1], self.heads, -1).transpose(1, 2)
        keep = torch.cat([torch.ones(b, n, dtype=torch.bool, device=x.device), context_mask], dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class ToyBlock(nn.Module):
    """AdaLN-modulated attention + MLP block (the unit of checkpointing, swapping and LoRA targeting)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm1_linear = nn.Linear(dim, 6 * dim)
        self.attn = ToyAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff_in = nn.Linear(dim, 4 * dim)
        self.ff_out = nn.Linear(4 * dim, dim)

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.norm1_linear(F.silu(temb))[:, None].chunk(
            6, dim=-1
        )
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1, context, mask)
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.ff_out(F.gelu(self.ff_in(h), approximate="tanh"))


class ToyDenoiser(nn.Module):
    """Predicts the flow velocity of noisy latents (B, C, T, H, W) given a timestep and text."""

    def __init__(self, dim: int = 32, heads: int = 2, depth: int = 2) -> None:
        super().__init__()
        self.x_embedder = nn.Conv3d(LATENT_CHANNELS, dim, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.time_in = nn.Linear(64, dim)
        self.time_out = nn.Linear(dim, dim)
        self.text_in = nn.Linear(TEXT_DIM, dim)
        self.pooled_in = nn.Linear(TEXT_DIM, dim)
        self.blocks = nn.ModuleList(ToyBlock(dim, heads) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(dim, LATENT_CHANNELS * 4)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        pooled: torch.Tensor,
    ) -> torch.Tensor:
        b, _, t, h, w = hidden_states.shape
        x = self.x_embedder(hidden_states).flatten(2).transpose(1, 2)  # (B, T*h/2*w/2, dim)
        x = x + position_embedding(t, h // 2, w // 2, x.shape[-1], x.device).to(x.dtype)
        temb = self.time_out(F.silu(self.time_in(timestep_embedding(timestep, 64).to(x.dtype))))
        temb = temb + self.pooled_in(pooled.to(x.dtype))
        context = self.text_in(text.to(x.dtype))
        for block in self.blocks:
            x = block(x, temb, context, text_mask.bool())
        out = self.proj_out(self.norm_out(x))  # (B, N, C*2*2)
        out = out.view(b, t, h // 2, w // 2, LATENT_CHANNELS, 2, 2)
        return out.permute(0, 4, 1, 2, 5, 3, 6).reshape(b, LATENT_CHANNELS, t, h, w)
