"""Linear layers that hold float8 weights and compute in the compute dtype, or in fp8 on GPUs that can.

:class:`Fp8Linear` replaces ``nn.Linear.forward`` (only the class changes; parameters, buffers and
state-dict names stay). Each call dequantises its weight (``weight.to(dtype) * scale_weight``) into a
temporary and multiplies in the compute dtype (autocast's dtype when autocast is on, else the input's).
Backward keeps only the fp8 weight and its small scale for the input gradient and dequantises again, so
neither pass ever holds a high-precision copy of the model.

With ``fp8_fast`` (``--fp8_fast`` on CUDA compute capability 8.9+), the forward multiplies the fp8 weight
directly with ``torch._scaled_mm``: the input is quantised per row (token) to float8_e4m3fn, the product
comes out in the compute dtype, and the input's and the weight's per-channel scales multiply it after.
Backward still dequantises (there is no fp8 gradient kernel here).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tuner_core.memory.fp8_format import FP8_DTYPE, FP8_DTYPES, FP8_MAX, dequantise_weight

#: The compute capability from which CUDA GPUs multiply fp8 matrices (Ada Lovelace, Hopper and newer).
FP8_MATMUL_CAPABILITY = (8, 9)
#: Smallest per-row input scale (an all-zero row would otherwise divide by zero).
_MIN_INPUT_SCALE = 1e-12


def fp8_matmul_problem(device: torch.device | str) -> str | None:
    """Why ``torch._scaled_mm`` cannot run on ``device`` (``None`` when it can)."""
    device = torch.device(device)
    if not hasattr(torch, "_scaled_mm"):
        return f"this PyTorch ({torch.__version__}) has no torch._scaled_mm"
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"fp8 matrix multiplication needs a CUDA GPU (the device is {device.type})"
    if torch.version.hip is not None:
        return "fp8 matrix multiplication on ROCm uses other fp8 formats; tuner supports it on CUDA only"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < FP8_MATMUL_CAPABILITY:
        wanted = ".".join(map(str, FP8_MATMUL_CAPABILITY))
        return (
            f"{torch.cuda.get_device_name(device)} has compute capability {major}.{minor}; fp8 matrix "
            f"multiplication needs {wanted} or newer (RTX 40xx, L4, L40, H100 and later)"
        )
    return None


def fast_layout_problem(weight: torch.Tensor, scale: torch.Tensor | None) -> str | None:
    """Why ``torch._scaled_mm`` cannot multiply this weight (``None`` when it can).

    It needs float8_e4m3fn values, both sizes multiples of 16, and a scale per tensor or per output
    channel (block-wise scales vary along the summed dimension, so they cannot be applied afterwards).
    """
    if weight.dtype != FP8_DTYPE:
        return f"the weight is {weight.dtype}, not {FP8_DTYPE}"
    out_features, in_features = weight.shape
    if out_features % 16 or in_features % 16:
        return f"its shape {tuple(weight.shape)} is not a multiple of 16"
    if scale is not None and scale.numel() != 1 and tuple(scale.shape) != (out_features, 1):
        return f"its scale is block-wise {tuple(scale.shape)}; fp8 matmul needs one per output channel"
    return None


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a layer computes in: autocast's when autocast is on for ``x``'s device, else ``x``'s."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def _scaled_matmul(x2d: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype):
    """``x2d @ (weight * scale).T`` through ``torch._scaled_mm`` with ``x2d`` quantised per row."""
    row_scale = x2d.abs().amax(dim=1, keepdim=True).to(torch.float32).clamp(min=_MIN_INPUT_SCALE) / FP8_MAX
    quantised = (x2d.to(torch.float32) / row_scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    one = torch.ones((), dtype=torch.float32, device=x2d.device)
    product = torch._scaled_mm(quantised, weight.t(), scale_a=one, scale_b=one, out_dtype=dtype)
    product = product * row_scale.to(dtype)
    if scale is not None:
        product = product * scale.reshape(1, -1).to(dtype)
    return product


class _Fp8LinearFunction(torch.autograd.Function):
    """``y = x @ dequantise(W).T + b`` that saves the fp8 weight, never its dequantised copy, for backward."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        scale: torch.Tensor | None,
        bias: torch.Tensor | None,
        dtype: torch.dtype,
        fast: bool,
    ) -> torch.Tensor:
        ctx.save_for_backward(weight, scale)
        ctx.dtype, ctx.input_dtype = dtype, x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        bias_c = None if bias is None else bias.to(dtype)
        if fast and x.numel() > 0:
            flat = x.reshape(-1, x.shape[-1]).to(dtype)
            out = _scaled_matmul(flat, weight, scale, dtype)
            if bias_c is not None:
                out = out + bias_c
            return out.reshape(*x.shape[:-1], weight.shape[0])
        return F.linear(x.to(dtype), dequantise_weight(weight, scale, dtype), bias_c)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight, scale = ctx.saved_tensors
        grad_input = grad_bias = None
        if ctx.needs_input_grad[0]:
            dequantised = dequantise_weight(weight, scale, ctx.dtype)
            grad_input = (grad.to(ctx.dtype) @ dequantised).to(ctx.input_dtype)
        if ctx.needs_input_grad[3]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0, dtype=torch.float32).to(ctx.bias_dtype)
        return grad_input, None, None, grad_bias, None, None


class Fp8Linear(nn.Linear):
    """An ``nn.Linear`` whose weight is float8 (optionally with a ``scale_weight`` buffer).

    Made by :func:`make_fp8_linear` from a loaded Linear; never constructed directly. ``fp8_fast`` selects
    the ``torch._scaled_mm`` forward (set only where :func:`fp8_matmul_problem` and
    :func:`fast_layout_problem` found nothing against it).
    """

    fp8_fast: bool = False

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """The layer's output in the compute dtype (see the module doc)."""
        scale = self._buffers.get("scale_weight")
        dtype = compute_dtype(input)
        return _Fp8LinearFunction.apply(input, self.weight, scale, self.bias, dtype, self.fp8_fast)

    def extra_repr(self) -> str:
        """``nn.Linear``'s, plus the storage and the scaling."""
        scale = self._buffers.get("scale_weight")
        scaling = "unscaled" if scale is None else f"scale {tuple(scale.shape)}"
        fast = ", fp8 matmul" if self.fp8_fast else ""
        return f"{super().extra_repr()}, {self.weight.dtype}, {scaling}{fast}"


def make_fp8_linear(module: nn.Linear, *, fast: bool = False) -> Fp8Linear:
    """Turn a loaded Linear with a float8 weight into an :class:`Fp8Linear`, in place; returns it.

    :param fast: use ``torch._scaled_mm`` when this layer's layout allows it (ignored otherwise).
    :raises TypeError: the weight is not float8, or the layer's forward was already replaced (a network
        wrapped it first: fp8 must be applied before networks wrap the layers).
    """
    if module.weight.dtype not in FP8_DTYPES:
        raise TypeError(f"make_fp8_linear: the weight is {module.weight.dtype}, not float8")
    if "forward" in vars(module) and not isinstance(module, Fp8Linear):
        raise TypeError(
            "make_fp8_linear: this Linear's forward was already replaced (by a network?); store the weights "
            "in fp8 before a network wraps the layers"
        )
    module.__class__ = Fp8Linear
    scale = module._buffers.get("scale_weight")
    module.fp8_fast = fast and fast_layout_problem(module.weight, scale) is None
    return module  # type: ignore[return-value]
