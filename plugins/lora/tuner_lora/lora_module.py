"""One LoRA adapter around one Linear or Conv layer: y = W x + multiplier * (alpha / rank) * up(down(x))."""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRAModule(nn.Module):
    """A low-rank update attached to ``original`` by replacing its ``forward``.

    Saved tensors are ``lora_down.weight`` (rank, in), ``lora_up.weight`` (out, rank) and ``alpha`` (a
    scalar), the kohya / musubi-tuner layout that ComfyUI and the reference tool read.
    """

    def __init__(
        self,
        lora_name: str,
        original: nn.Module,
        *,
        rank: int,
        alpha: float | None,
        multiplier: float = 1.0,
        dropout: float | None = None,
        rank_dropout: float | None = None,
        module_dropout: float | None = None,
    ) -> None:
        super().__init__()
        self.lora_name = lora_name
        if isinstance(original, nn.Linear):
            self.lora_down: nn.Module = nn.Linear(original.in_features, rank, bias=False)
            self.lora_up: nn.Module = nn.Linear(rank, original.out_features, bias=False)
        elif isinstance(original, (nn.Conv2d, nn.Conv3d)):
            conv = type(original)
            self.lora_down = conv(
                original.in_channels,
                rank,
                original.kernel_size,
                original.stride,
                original.padding,
                bias=False,
            )
            ones = (1,) * len(original.kernel_size)
            self.lora_up = conv(rank, original.out_channels, ones, ones, bias=False)
        else:
            raise TypeError(
                f"LoRA supports Linear and Conv2d/3d layers, not {type(original).__name__} ({lora_name})"
            )
        alpha = float(rank) if alpha is None or alpha == 0 else float(alpha)
        self.register_buffer("alpha", torch.tensor(alpha))
        self.rank = rank
        self.scale = alpha / rank
        self.multiplier = multiplier
        self.dropout = dropout
        self.rank_dropout = rank_dropout
        self.module_dropout = module_dropout
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        # Held outside the module tree so the base weights are neither saved nor trained with the adapter.
        self._original = [original]
        self._original_forward = None
        # A loaded file brings its own alpha (--network_weights, resume): the scale follows it.
        self.register_load_state_dict_post_hook(_scale_from_alpha)

    def apply_to(self) -> None:
        """Route the original layer's forward through this adapter."""
        original = self._original[0]
        if self._original_forward is None:
            self._original_forward = original.forward
            original.forward = self.forward

    def remove(self) -> None:
        """Restore the original layer's forward."""
        if self._original_forward is not None:
            self._original[0].forward = self._original_forward
            self._original_forward = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The original output plus the scaled low-rank update."""
        base = self._original_forward(x)
        if self.multiplier == 0 or (
            self.training and self.module_dropout and torch.rand((), device="cpu") < self.module_dropout
        ):
            return base
        h = self.lora_down(x.to(self.lora_down.weight.dtype))
        if self.training and self.dropout:
            h = nn.functional.dropout(h, p=self.dropout)
        scale = self.scale
        if self.training and self.rank_dropout:
            # One keep/drop decision per sample and rank, broadcast over tokens or pixels.
            keep = (torch.rand(h.shape[0], self.rank, device=h.device) > self.rank_dropout).to(h.dtype)
            if isinstance(self.lora_down, nn.Linear):
                keep = keep.view(h.shape[0], *([1] * (h.dim() - 2)), self.rank)
            else:
                keep = keep.view(h.shape[0], self.rank, *([1] * (h.dim() - 2)))
            h = h * keep
            scale = scale / (1.0 - self.rank_dropout)  # keep the expected update size
        scale = self.multiplier * scale
        if isinstance(self.lora_up, nn.Linear) and h.dtype == base.dtype:
            # One fused kernel: base + scale * h @ up^T (no full-size temporaries for the scale and the sum).
            flat = torch.addmm(
                base.reshape(-1, base.shape[-1]),
                h.reshape(-1, self.rank),
                self.lora_up.weight.t(),
                alpha=scale,
            )
            return flat.view(base.shape)
        # The delta in its own (float32) precision is added to the base and the sum rounded once.
        return (base + self.lora_up(h) * scale).to(base.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The weight update this adapter adds, shaped like the original weight (multiplier excluded)."""
        down = self.lora_down.weight.float()
        up = self.lora_up.weight.float()
        if down.dim() == 2:
            return (up @ down) * self.scale
        if all(k == 1 for k in down.shape[2:]):
            flat = up.flatten(1) @ down.flatten(1)
            return flat.view(up.shape[0], down.shape[1], *down.shape[2:]) * self.scale
        # kxk down, 1x1 up: compose the two convolutions into one kxk kernel.
        return (
            torch.einsum("or,rihw->oihw" if down.dim() == 4 else "or,rithw->oithw", up.flatten(1), down)
            * self.scale
        )


def _scale_from_alpha(module: LoRAModule, _incompatible_keys: object) -> None:
    """After ``load_state_dict``: ``scale = alpha / rank`` with the alpha just loaded."""
    alpha = float(module.alpha)
    module.scale = (alpha or module.rank) / module.rank
