"""Dual-stream (MMDiT) block: image and text streams with their own weights, attending jointly."""

from __future__ import annotations

import torch
from torch import nn

from tuner_core.attention import attention
from tuner_framepack.dit.layers import (
    AdaModulation,
    FeedForward,
    RMSNorm,
    gated_residual,
    modulated_layer_norm,
)
from tuner_framepack.dit.rope import apply_rope


class JointAttention(nn.Module):
    """Joint attention over ``[image, text]``: image projections ``to_*``, text projections ``add_*_proj``.

    Queries and keys get a per-head RMSNorm; image queries and keys are then rotated by RoPE (text is not).
    """

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        """:param dim: model width (``heads * head_dim``)."""
        super().__init__()
        self.heads = heads
        self.attn_mode = "sdpa"
        self.split_attn = False
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.add_q_proj = nn.Linear(dim, dim)
        self.add_k_proj = nn.Linear(dim, dim)
        self.add_v_proj = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(head_dim)
        self.norm_k = RMSNorm(head_dim)
        self.norm_added_q = RMSNorm(head_dim)
        self.norm_added_k = RMSNorm(head_dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.to_add_out = nn.Linear(dim, dim)

    def _heads(self, proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return proj(x).unflatten(-1, (self.heads, -1))

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        rope_freqs: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend over the joint sequence; return the projected image and text outputs."""
        n_image = image.shape[1]
        image_freqs = rope_freqs[:, :n_image]
        q = torch.cat(
            [apply_rope(self.norm_q(self._heads(self.to_q, image)), image_freqs),
             self.norm_added_q(self._heads(self.add_q_proj, text))],
            dim=1,
        )  # fmt: skip
        k = torch.cat(
            [apply_rope(self.norm_k(self._heads(self.to_k, image)), image_freqs),
             self.norm_added_k(self._heads(self.add_k_proj, text))],
            dim=1,
        )  # fmt: skip
        v = torch.cat([self._heads(self.to_v, image), self._heads(self.add_v_proj, text)], dim=1)
        out = attention(
            q, k, v, mode=self.attn_mode, attention_mask=attention_mask, split_attn=self.split_attn
        )
        # split (not two slices): its backward writes both gradients into one buffer
        image_out, text_out = out.flatten(2).split([n_image, out.shape[1] - n_image], dim=1)
        return self.to_out[0](image_out), self.to_add_out(text_out)


class HunyuanVideoTransformerBlock(nn.Module):
    """Dual-stream block: per stream AdaLN-zero modulation (shift, scale, gate, shift_mlp, scale_mlp,
    gate_mlp), joint attention, and a GELU-tanh MLP, with gated residuals.
    """

    def __init__(self, heads: int, head_dim: int, mlp_dim: int) -> None:
        """:param heads: attention heads; :param head_dim: their width; :param mlp_dim: MLP hidden width."""
        super().__init__()
        dim = heads * head_dim
        self.norm1 = AdaModulation(dim, 6)
        self.norm1_context = AdaModulation(dim, 6)
        self.attn = JointAttention(dim, heads, head_dim)
        self.ff = FeedForward(dim, mlp_dim, "gelu_tanh")
        self.ff_context = FeedForward(dim, mlp_dim, "gelu_tanh")

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rope_freqs: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update both streams.

        :param hidden_states: image stream ``(B, S, dim)``.
        :param encoder_hidden_states: text stream ``(B, L, dim)`` (SigLIP then LLaMA tokens).
        :param temb: conditioning vector ``(B, dim)``.
        :param rope_freqs: complex RoPE table ``(B', S + L, head_dim/2)``; only the first ``S`` rows are used.
        :param attention_mask: ``(B, S + L)`` key-padding mask, or ``None``.
        """
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = self.norm1(temb)
        c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(temb)

        image_out, text_out = self.attn(
            modulated_layer_norm(hidden_states, shift, scale),
            modulated_layer_norm(encoder_hidden_states, c_shift, c_scale),
            rope_freqs,
            attention_mask,
        )
        hidden_states = gated_residual(hidden_states, image_out, gate)
        encoder_hidden_states = gated_residual(encoder_hidden_states, text_out, c_gate)

        image_mlp = self.ff(modulated_layer_norm(hidden_states, shift_mlp, scale_mlp))
        text_mlp = self.ff_context(modulated_layer_norm(encoder_hidden_states, c_shift_mlp, c_scale_mlp))
        return gated_residual(hidden_states, image_mlp, gate_mlp), gated_residual(
            encoder_hidden_states, text_mlp, c_gate_mlp
        )
