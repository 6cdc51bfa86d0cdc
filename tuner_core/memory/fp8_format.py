"""The fp8 weight format of musubi-tuner's ``--fp8_scaled``: quantise a weight, dequantise it, check a scale.

A weight becomes float8_e4m3fn values plus a scale, stored beside it as ``<layer>.scale_weight``:

- block-wise (the default): blocks of :data:`BLOCK_SIZE` (64) input columns, scale shape ``(out, in/64, 1)``;
- per output channel when ``in`` is not a multiple of 64: scale shape ``(out, 1)``;
- per tensor when the weight is not 2-D: a 0-d scale.

``scale = max|w| / 448`` over each block, clamped to at least ``1e-8`` and stored in the weight's dtype
(bf16 for a bf16 checkpoint); the stored values are ``w / scale`` computed in float32, clamped to ±448,
NaN turned to 0. Dequantising multiplies back: ``w ≈ q * scale``.

One deliberate difference from the reference: it takes the block maximum over the raw weight, so a NaN in
a block makes that block's scale NaN and the whole block NaN again once dequantised. Here NaN and +-inf
are left out of the maximum, so only the NaN entries become 0 and the rest of their block stays usable.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

#: The fp8 storage format of ``--fp8_base`` / ``--fp8_scaled``.
FP8_DTYPE = torch.float8_e4m3fn
#: Both fp8 formats torch knows; a checkpoint stored in either is used as it is.
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
#: The largest float8_e4m3fn value (448).
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)
#: Input columns per block-wise scale.
BLOCK_SIZE = 64
#: The smallest scale (an all-zero block would otherwise divide by zero).
MIN_SCALE = 1e-8
_FP16_SMALLEST = 2.0**-24
#: What a weight's name ends in, and what its scale's name ends in instead.
WEIGHT_SUFFIX = ".weight"
SCALE_SUFFIX = ".scale_weight"
#: The quantisation modes, finest first.
MODES = ("block", "channel", "tensor")
#: Input sizes whose per-channel fallback was already logged as a warning (later layers log at debug).
_FALLBACKS_SAID: set[int] = set()


def scale_key(weight_key: str) -> str:
    """``transformer_blocks.0.attn.to_q.weight`` -> ``transformer_blocks.0.attn.to_q.scale_weight``."""
    if not weight_key.endswith(WEIGHT_SUFFIX):
        raise ValueError(f"{weight_key!r} is not the name of a weight (it must end in {WEIGHT_SUFFIX})")
    return weight_key[: -len(WEIGHT_SUFFIX)] + SCALE_SUFFIX


def weight_key(scale_name: str) -> str:
    """The weight a ``<layer>.scale_weight`` tensor scales: ``<layer>.weight``."""
    if not scale_name.endswith(SCALE_SUFFIX):
        raise ValueError(f"{scale_name!r} is not the name of an fp8 scale (it must end in {SCALE_SUFFIX})")
    return scale_name[: -len(SCALE_SUFFIX)] + WEIGHT_SUFFIX


def quantisation_mode(shape: tuple[int, ...], mode: str = "block", block_size: int = BLOCK_SIZE) -> str:
    """The mode the reference really uses for a weight of ``shape`` when ``mode`` is asked for.

    ``block`` falls back to ``channel`` when the input size is not a multiple of ``block_size`` and to
    ``tensor`` when the weight is not 2-D; ``channel`` falls back to ``tensor`` when it is not 2-D.
    """
    if mode not in MODES:
        raise ValueError(f"unknown fp8 quantisation mode {mode!r}; known: {', '.join(MODES)}")
    if mode == "tensor" or len(shape) != 2:
        return "tensor"
    if mode == "block" and shape[1] % block_size != 0:
        return "channel"
    return mode


def scale_shape(shape: tuple[int, ...], mode: str = "block", block_size: int = BLOCK_SIZE) -> tuple[int, ...]:
    """The shape of the ``scale_weight`` the reference stores for a weight of ``shape``."""
    used = quantisation_mode(shape, mode, block_size)
    if used == "block":
        return (shape[0], shape[1] // block_size, 1)
    if used == "channel":
        return (shape[0], 1)
    return ()


def _finite_abs(tensor: torch.Tensor) -> torch.Tensor:
    """``|tensor|`` with NaN and +-inf as 0, so they never decide a scale."""
    return torch.nan_to_num(tensor.abs(), nan=0.0, posinf=0.0)


def quantise_weight(
    weight: torch.Tensor, mode: str = "block", block_size: int = BLOCK_SIZE, *, key: str = "weight"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(float8_e4m3fn values, scale)`` of ``weight`` in the reference's format (see the module doc).

    The scale has :func:`scale_shape`'s shape and ``weight``'s dtype; the values have ``weight``'s shape.
    Only the working copy of this one tensor is made in float32.
    """
    used = quantisation_mode(tuple(weight.shape), mode, block_size)
    if used != mode and mode == "block" and weight.dim() == 2:
        in_features = weight.shape[1]
        say = log.warning if in_features not in _FALLBACKS_SAID else log.debug
        _FALLBACKS_SAID.add(in_features)
        say(
            "%s: input size %d is not a multiple of %d; quantised per output channel",
            key,
            in_features,
            block_size,
        )
    values = weight.to(torch.float32)
    if used == "block":
        values = values.reshape(weight.shape[0], weight.shape[1] // block_size, block_size)
        largest = _finite_abs(values).amax(dim=2, keepdim=True)
    elif used == "channel":
        largest = _finite_abs(values).amax(dim=1, keepdim=True)
    else:
        largest = _finite_abs(values).amax()
    # Rounded to the stored dtype first, so quantising and dequantising use the very same scale.
    scale = (largest / FP8_MAX).clamp(min=MIN_SCALE).to(weight.dtype)
    if weight.dtype == torch.float16:
        scale = scale.clamp(min=_FP16_SMALLEST)  # 1e-8 is below float16's range
    quantised = (values / scale.to(torch.float32)).nan_to_num_(0.0).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return quantised.reshape(weight.shape), scale


def cast_to_fp8(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` in float8_e4m3fn without a scale (``--fp8_base`` alone): clamped to ±448, NaN as 0."""
    if weight.dtype in FP8_DTYPES:
        return weight
    return weight.clamp(-FP8_MAX, FP8_MAX).nan_to_num(0.0).to(FP8_DTYPE)


def dequantise_weight(weight: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``weight * scale`` in ``dtype`` for any scale :func:`scale_problem` accepts (``None``: no scale)."""
    values = weight.to(dtype)
    if scale is None:
        return values
    if scale.dim() == 3:
        out_features, blocks, _ = scale.shape
        blocked = values.reshape(out_features, blocks, -1) * scale.to(dtype)
        return blocked.reshape(weight.shape)
    return values * scale.to(dtype)


def scale_problem(weight_shape: tuple[int, ...], scale_shape_: tuple[int, ...]) -> str | None:
    """Why a stored scale of ``scale_shape_`` cannot scale a weight of ``weight_shape`` (``None``: it can).

    Accepted, as the reference's forward reads them: ``()`` or ``(1,)`` per tensor, ``(out, 1)`` per
    channel, ``(out, blocks, 1)`` with ``in`` a multiple of ``blocks``, for a 2-D weight; ``()`` or
    ``(1,)`` for any other.
    """
    scale_shape_ = tuple(scale_shape_)
    if scale_shape_ in ((), (1,)):
        return None
    if len(weight_shape) != 2:
        return (
            f"a {len(weight_shape)}-D weight takes only a per-tensor scale, not one of shape {scale_shape_}"
        )
    out_features, in_features = weight_shape
    if scale_shape_ == (out_features, 1):
        return None
    if len(scale_shape_) == 3 and scale_shape_[0] == out_features and scale_shape_[2] == 1:
        blocks = scale_shape_[1]
        if blocks > 0 and in_features % blocks == 0:
            return None
    return (
        f"scale shape {scale_shape_} fits no fp8 layout of a {out_features}x{in_features} weight "
        f"(per tensor (), per channel ({out_features}, 1), block-wise ({out_features}, "
        f"{in_features // BLOCK_SIZE if in_features % BLOCK_SIZE == 0 else 'in/blocks'}, 1))"
    )
