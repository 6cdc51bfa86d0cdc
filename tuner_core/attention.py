"""Attention dispatch shared by every architecture: one call, four kernels, optional key padding.

Tensor layout: ``q``, ``k`` and ``v`` are ``(B, L, H, D)`` (batch, sequence, heads, head dim), the layout a
Linear projection followed by ``unflatten(-1, (H, D))`` produces without a copy, and the native layout of
flash-attn, xformers and SageAttention (``NHD``). The result has the same layout (for SDPA it is a transposed
view; call ``flatten(2)`` or ``reshape`` to merge the heads).

Masking: ``attention_mask`` is an optional ``(B, L)`` boolean key-padding mask, ``True`` for tokens that may be
attended to. Where a sample's padding differs from the others, each backend handles it in its own way:

- ``sdpa`` passes a broadcast ``(B, 1, 1, L)`` boolean mask to :func:`torch.nn.functional.scaled_dot_product_attention`;
- ``flash`` / ``sage`` use their variable-length kernels, and ``xformers`` a block-diagonal bias. These need the
  valid tokens of each sample to be a *prefix* of its sequence (padding at the tail), which is how sequence
  models pad; each sample's padded tail then becomes a separate dummy segment, so no tokens are copied;
- ``split_attn=True`` runs each sample on its valid prefix alone (any backend) and writes zeros for padding.

Outputs at padded query positions are unspecified (finite); callers discard them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
import torch.nn.functional as F

from tuner_core.errors import ConfigError, NotAvailableError

#: The attention backends, by canonical name.
__all__ = [
    "ATTENTION_ALIASES",
    "ATTENTION_BACKENDS",
    "ATTENTION_MODES",
    "attention",
    "check_attention_backend",
    "normalize_attn_mode",
]

ATTENTION_BACKENDS = ("sdpa", "flash", "sage", "xformers")

#: Other spellings accepted for the backends (the reference tools' option values).
ATTENTION_ALIASES = {
    "torch": "sdpa",
    "flash_attn": "flash",
    "flash2": "flash",
    "sageattn": "sage",
    "sage_attn": "sage",
}

#: Every spelling :func:`normalize_attn_mode` accepts: the backends, then their aliases.
ATTENTION_MODES = ATTENTION_BACKENDS + tuple(ATTENTION_ALIASES)

#: Python package each optional backend imports, and the name ``pip`` installs it under.
_PACKAGES = {
    "flash": ("flash_attn", "flash-attn"),
    "sage": ("sageattention", "sageattention"),
    "xformers": ("xformers.ops", "xformers"),
}


def normalize_attn_mode(mode: str) -> str:
    """The canonical backend name of ``mode`` (``"torch"`` -> ``"sdpa"``, ``"sageattn"`` -> ``"sage"``, ...).

    :raises ConfigError: if ``mode`` names no backend.
    """
    name = mode.strip().lower()
    name = ATTENTION_ALIASES.get(name, name)
    if name not in ATTENTION_BACKENDS:
        raise ConfigError(f"unknown attention backend {mode!r}; choose one of: {', '.join(ATTENTION_MODES)}")
    return name


def _backend_module(mode: str) -> ModuleType | None:
    """Import the package behind ``mode``; ``None`` for SDPA, which is part of torch."""
    if mode == "sdpa":
        return None
    module_name, pip_name = _PACKAGES[mode]
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise NotAvailableError(
            f"attention backend {mode!r} needs the {pip_name!r} package, which is not installed "
            f"({exc}). Install it (pip install {pip_name}) or use --sdpa / attn_mode='sdpa'."
        ) from exc


def check_attention_backend(mode: str, *, training: bool = False) -> str:
    """Validate a backend before a model is used with it; return its canonical name.

    :param training: whether backward passes will run (SageAttention has none).
    :raises ConfigError: for an unknown name, or SageAttention while training.
    :raises NotAvailableError: if the backend's package is not installed.
    """
    name = normalize_attn_mode(mode)
    if training and name == "sage":
        raise ConfigError("SageAttention is for inference only (it has no backward pass); use sdpa or flash")
    _backend_module(name)
    return name


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mode: str = "sdpa",
    attention_mask: torch.Tensor | None = None,
    split_attn: bool = False,
) -> torch.Tensor:
    """Scaled dot-product attention (scale ``1/sqrt(D)``, no dropout, not causal).

    :param q: queries ``(B, Lq, H, D)``.
    :param k: keys ``(B, Lk, H, D)``.
    :param v: values ``(B, Lk, H, D)``.
    :param mode: backend name or alias (see :data:`ATTENTION_BACKENDS`).
    :param attention_mask: optional ``(B, Lk)`` boolean key-padding mask, ``True`` = attend.
    :param split_attn: run each sample on its valid prefix separately (needs ``Lq == Lk`` with a mask).
    :returns: ``(B, Lq, H, D)``.
    """
    name = normalize_attn_mode(mode)
    if name == "sage" and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise NotAvailableError("SageAttention has no backward pass; train with attn_mode 'sdpa' or 'flash'")
    if attention_mask is not None and attention_mask.shape != (k.shape[0], k.shape[1]):
        raise ValueError(
            f"attention_mask must be (batch, key length) = {(k.shape[0], k.shape[1])}, "
            f"got {tuple(attention_mask.shape)}"
        )
    if split_attn:
        return _split_attention(q, k, v, name, attention_mask)
    if attention_mask is None:
        return _dense(q, k, v, name)
    if name == "sdpa":
        return _sdpa(q, k, v, attention_mask[:, None, None, :])
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"backend {name!r} masks self-attention only (query and key lengths must match)")
    return _varlen(q, k, v, name, _prefix_lengths(attention_mask))


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """torch SDPA on ``(B, L, H, D)`` views; returns a ``(B, L, H, D)`` view."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )
    return out.transpose(1, 2)


def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, name: str) -> torch.Tensor:
    """Unmasked attention with the chosen kernel."""
    module = _backend_module(name)
    if name == "sdpa":
        return _sdpa(q, k, v, None)
    if name == "flash":
        return module.flash_attn_func(q, k, v)
    if name == "sage":
        return module.sageattn(q, k, v, tensor_layout="NHD", is_causal=False)
    return module.memory_efficient_attention(q, k, v)


def _prefix_lengths(attention_mask: torch.Tensor) -> list[int]:
    """Valid length of each row of a key-padding mask whose valid tokens must form a prefix."""
    mask = attention_mask.to(device="cpu", dtype=torch.bool)
    lengths = mask.sum(dim=1)
    prefix = torch.arange(mask.shape[1])[None, :] < lengths[:, None]
    if not torch.equal(prefix, mask):
        raise ValueError("this attention backend needs padding at the end of each sequence (prefix masks)")
    return lengths.tolist()


def _segments(lengths: list[int], total: int) -> list[int]:
    """Segment lengths covering ``B * total`` packed tokens: each sample's valid prefix, then its padding."""
    segments = []
    for length in lengths:
        segments.extend(s for s in (length, total - length) if s > 0)
    return segments


def _varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, name: str, lengths: list[int]) -> torch.Tensor:
    """Masked attention through a variable-length kernel, padding tails kept as separate segments."""
    module = _backend_module(name)
    batch, length, heads, dim = q.shape
    segments = _segments(lengths, length)
    packed = [t.reshape(batch * length, heads, dim) for t in (q, k, v)]
    if name == "xformers":
        bias = module.fmha.BlockDiagonalMask.from_seqlens(segments)
        out = module.memory_efficient_attention(*(t.unsqueeze(0) for t in packed), attn_bias=bias)
        return out.reshape(batch, length, heads, dim)
    cu_seqlens = torch.tensor([0, *segments], dtype=torch.int32, device=q.device).cumsum(0, dtype=torch.int32)
    longest = max(segments)
    if name == "flash":
        out = module.flash_attn_varlen_func(*packed, cu_seqlens, cu_seqlens, longest, longest)
    else:
        out = module.sageattn_varlen(*packed, cu_seqlens, cu_seqlens, longest, longest, is_causal=False)
    return out.reshape(batch, length, heads, dim)


def _split_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, name: str, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """One sample at a time over its valid prefix; zeros at padded query positions."""
    batch = q.shape[0]
    lengths = [k.shape[1]] * batch if attention_mask is None else _prefix_lengths(attention_mask)
    if attention_mask is not None and q.shape[1] != k.shape[1]:
        raise ValueError("split_attn with a mask needs self-attention (query and key lengths must match)")
    outputs = []
    for i, length in enumerate(lengths):
        q_len = q.shape[1] if attention_mask is None else length
        out = _dense(q[i : i + 1, :q_len], k[i : i + 1, :length], v[i : i + 1, :length], name)
        if q_len < q.shape[1]:
            pad = out.new_zeros(1, q.shape[1] - q_len, *out.shape[2:])
            out = torch.cat([out, pad], dim=1)
        outputs.append(out)
    return torch.cat(outputs, dim=0)
