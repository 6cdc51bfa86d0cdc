"""Single-stream block: image and text tokens as one sequence, attention and MLP in parallel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tuner_core.attention import attention
from tuner_framepack.dit.layers import AdaModulation, RMSNorm, gated_residual, modulated_layer_norm
from tuner_framepack.dit.rope import apply_rope


class SingleStreamAttention(nn.Module):
    """Self-attention without an output projection (``pre_only``): ``to_q/k/v`` and per-head RMSNorm."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        """:param dim: model width (``heads * head_dim``)."""
        super().__init__()
        self.heads = heads
        self.attn_mode = "sdpa"
        self.split_attn = False
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(head_dim)
        self.norm_k = RMSNorm(head_dim)

    def forward(
        self, x: torch.Tensor, rope_freqs: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Attention output ``(B, N, dim)`` of the joint sequence.

        The RoPE table covers the whole sequence; its text rows are the identity rotation, so image and
        text rotate in one call, with no split and re-concatenation.
        """
        q = apply_rope(self.norm_q(self.to_q(x).unflatten(-1, (self.heads, -1))), rope_freqs)
        k = apply_rope(self.norm_k(self.to_k(x).unflatten(-1, (self.heads, -1))), rope_freqs)
        v = self.to_v(x).unflatten(-1, (self.heads, -1))
        out = attention(
            q, k, v, mode=self.attn_mode, attention_mask=attention_mask, split_attn=self.split_attn
        )
        return out.flatten(2)


class HunyuanVideoSingleTransformerBlock(nn.Module):
    """Single-stream block: AdaLN-zero (shift, scale, gate), then ``proj_out(concat[attention, GELU-tanh MLP])``
    as one gated residual.

    Unlike the reference, it takes and returns the joint ``[image, text]`` sequence: the model joins the
    streams once before the first single block and never splits them again.
    """

    def __init__(self, heads: int, head_dim: int, mlp_dim: int) -> None:
        """:param heads: attention heads; :param head_dim: their width; :param mlp_dim: MLP hidden width."""
        super().__init__()
        dim = heads * head_dim
        self.attn = SingleStreamAttention(dim, heads, head_dim)
        self.norm = AdaModulation(dim, 3)
        self.proj_mlp = nn.Linear(dim, mlp_dim)
        self.proj_out = nn.Linear(dim + mlp_dim, dim)

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rope_freqs: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Update the joint sequence ``(B, N, dim)``.

        :param temb: conditioning vector ``(B, dim)``.
        :param rope_freqs: complex RoPE table ``(B', N, head_dim/2)`` (identity on text rows).
        :param attention_mask: ``(B, N)`` key-padding mask, or ``None``.
        """
        shift, scale, gate = self.norm(temb)
        normed = modulated_layer_norm(hidden_states, shift, scale)
        mlp = F.gelu(self.proj_mlp(normed), approximate="tanh")
        attn = self.attn(normed, rope_freqs, attention_mask)
        return gated_residual(hidden_states, self.proj_out(torch.cat([attn, mlp], dim=-1)), gate)
