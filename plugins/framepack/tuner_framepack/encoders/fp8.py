"""Linear layers whose weights are stored in float8 and upcast on the fly (``--fp8_llm``).

The reference keeps the LLaMA weights in float8_e4m3fn and relies on autocast to upcast them per matmul;
here each Linear does the upcast itself, so the same model runs under autocast on GPU and without it on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn


class UpcastLinear(nn.Linear):
    """A Linear whose (possibly float8) weight and bias are cast to the input's dtype for each call."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """``x @ W.T + b`` with ``W`` and ``b`` in ``x``'s dtype."""
        bias = None if self.bias is None else self.bias.to(input.dtype)
        return F.linear(input, self.weight.to(input.dtype), bias)


def use_upcast_linears(model: nn.Module) -> int:
    """Turn every plain ``nn.Linear`` of ``model`` into an :class:`UpcastLinear`; returns how many.

    Only the class changes: parameters, names and state dict stay as they are.
    """
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = UpcastLinear
            count += 1
    return count
