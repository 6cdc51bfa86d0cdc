"""Small building blocks shared by the DiT's parts: norms, modulation, feed-forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: eps of every LayerNorm and RMSNorm in the model
NORM_EPS = 1e-6


class _RMSNormFunction(torch.autograd.Function):
    """RMSNorm with a hand-written backward that keeps only the input and the per-row scale.

    Autograd through the plain expression would also keep the normalised tensor (as large as the input)
    for the weight's gradient; here it is recomputed from the input, which is cheaper than storing it.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, weight: torch.Tensor, eps: float):
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))  # float32 at least
        rstd = torch.rsqrt(x32.square().mean(dim=-1, keepdim=True) + eps)
        ctx.save_for_backward(x, rstd, weight)
        return (x32 * rstd).to(x.dtype) * weight.to(x.dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor):
        x, rstd, weight = ctx.saved_tensors
        normed = x.to(rstd.dtype) * rstd
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad.to(rstd.dtype) * normed).flatten(0, -2).sum(dim=0).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_normed = (grad * weight.to(grad.dtype)).to(rstd.dtype)
            # d/dx of x * rstd(x): rstd * (g - normed * mean(g * normed))
            dot = (grad_normed * normed).mean(dim=-1, keepdim=True)
            grad_x = ((grad_normed - normed * dot) * rstd).to(x.dtype)
        return grad_x, grad_weight, None


class RMSNorm(nn.Module):
    """Per-head RMSNorm of queries and keys.

    Precision as in the official model: variance and normalisation in float32, the result cast back to the
    input dtype, and only then multiplied by the weight (in the input dtype).
    """

    def __init__(self, dim: int, eps: float = NORM_EPS) -> None:
        """:param dim: size of the normalised (last) dimension, the head dim."""
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension of ``x``."""
        return _RMSNormFunction.apply(x, self.weight, self.eps)


class AdaModulation(nn.Module):
    """``linear(silu(temb))`` split into ``chunks`` per-sample vectors (shift / scale / gate ...)."""

    def __init__(self, dim: int, chunks: int) -> None:
        """:param dim: width of the conditioning vector and of each chunk."""
        super().__init__()
        self.chunks = chunks
        self.linear = nn.Linear(dim, chunks * dim)

    def forward(self, temb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``chunks`` tensors of shape ``(B, dim)``, in the checkpoint's chunk order."""
        return self.linear(F.silu(temb)).chunk(self.chunks, dim=-1)


def modulated_layer_norm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``LayerNorm(x) * (1 + scale) + shift`` with an un-affine LayerNorm (eps 1e-6); shift/scale are ``(B, C)``.

    At batch 1 the modulation is passed to ``layer_norm`` as its affine weight and bias: one fused kernel,
    and no normalised copy of the sequence kept for backward.
    """
    dim = x.shape[-1]
    if x.shape[0] == 1:
        return F.layer_norm(x, (dim,), weight=1 + scale[0], bias=shift[0], eps=NORM_EPS)
    normed = F.layer_norm(x, (dim,), eps=NORM_EPS)
    return torch.addcmul(shift[:, None], normed, 1 + scale[:, None])


def gated_residual(x: torch.Tensor, update: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x + update * gate`` with a per-sample ``(B, C)`` gate, in one kernel."""
    return torch.addcmul(x, update, gate[:, None])


class ProjectedActivation(nn.Module):
    """``act(proj(x))``: the first layer of a feed-forward block (key ``net.0.proj``)."""

    def __init__(self, dim: int, hidden: int, activation: str) -> None:
        """:param activation: ``"gelu_tanh"`` or ``"silu"``."""
        super().__init__()
        if activation not in ("gelu_tanh", "silu"):
            raise ValueError(f"unknown activation {activation!r}")
        self.activation = activation
        self.proj = nn.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project and activate."""
        x = self.proj(x)
        return F.gelu(x, approximate="tanh") if self.activation == "gelu_tanh" else F.silu(x)


class FeedForward(nn.Module):
    """Two-layer MLP with the checkpoint's key layout ``net.0.proj`` / ``net.2`` (``net.1`` was dropout)."""

    def __init__(self, dim: int, hidden: int, activation: str) -> None:
        """:param activation: ``"gelu_tanh"`` (transformer blocks) or ``"silu"`` (token refiner)."""
        super().__init__()
        self.net = nn.ModuleList(
            [ProjectedActivation(dim, hidden, activation), nn.Identity(), nn.Linear(hidden, dim)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP."""
        return self.net[2](self.net[0](x))
