"""3-axis rotary position embedding of the image stream, including the pooled RoPE of compressed history.

A RoPE table here is a complex64 tensor ``(B', N, D/2)`` (``B'`` is 1 when every sample shares its frame
indices): entry ``j`` of a token is ``cos(a_j) + i sin(a_j)`` and rotates the channel pair ``(2j, 2j+1)``
of a query/key head. The head dim is split ``[frame | height | width]`` (16/56/56 in the 13B model); along
each axis of ``d`` channels the pair ``j`` turns at ``theta^(-2j/d)`` radians per position. Positions are
(frame index, row, column) on the noisy latents' post-patch grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def axis_frequencies(dim: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    """Angular frequency of each channel pair of one axis: ``1 / theta^(2j/dim)``, float32, ``(dim/2,)``."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))


def rope_grid(
    frame_indices: torch.Tensor, height: int, width: int, axes_dim: tuple[int, int, int], theta: float
) -> torch.Tensor:
    """RoPE table of a (frames x height x width) token grid.

    :param frame_indices: ``(B', T)`` frame positions.
    :returns: complex64 ``(B', T, height, width, D/2)``.
    """
    device = frame_indices.device
    dim_t, dim_h, dim_w = axes_dim
    batch, frames = frame_indices.shape
    # angles per axis, computed once per position (not per token), as outer products in float32
    ang_t = frame_indices.float()[..., None] * axis_frequencies(dim_t, theta, device)
    ang_h = torch.arange(height, dtype=torch.float32, device=device)[:, None] * axis_frequencies(
        dim_h, theta, device
    )
    ang_w = torch.arange(width, dtype=torch.float32, device=device)[:, None] * axis_frequencies(
        dim_w, theta, device
    )
    shape = (batch, frames, height, width)
    angles = torch.cat(
        [
            ang_t[:, :, None, None, :].expand(*shape, dim_t // 2),
            ang_h[None, None, :, None, :].expand(*shape, dim_h // 2),
            ang_w[None, None, None, :, :].expand(*shape, dim_w // 2),
        ],
        dim=-1,
    )
    return torch.complex(torch.cos(angles), torch.sin(angles))


def pad_to_multiple(x: torch.Tensor, multiple: tuple[int, int, int]) -> torch.Tensor:
    """Replicate-pad the last three dims of ``(N, C, T, H, W)`` at their end up to multiples of ``multiple``."""
    pads = [(-size) % m for size, m in zip(x.shape[-3:], multiple)]
    if not any(pads):
        return x
    pad_t, pad_h, pad_w = pads
    return F.pad(x, (0, pad_w, 0, pad_h, 0, pad_t), mode="replicate")


def rope_tokens(
    frame_indices: torch.Tensor,
    height: int,
    width: int,
    axes_dim: tuple[int, int, int],
    theta: float,
    pool: int = 1,
) -> torch.Tensor:
    """RoPE table of one token group, flattened in (t, h, w) raster order: complex64 ``(B', N, D/2)``.

    :param pool: 1 for full-resolution tokens; 2 or 4 for the compressed history, whose table is the fine
        table replicate-padded to multiples of ``pool`` on (t, h, w) and average-pooled (cos and sin averaged
        separately, so the entries are no longer unit-norm).
    """
    grid = rope_grid(frame_indices, height, width, axes_dim, theta)
    if pool == 1:
        return grid.flatten(1, 3)
    batch, frames = frame_indices.shape
    # (B', T, H, W, D/2) complex -> (B', D, T, H, W) real, the layout 3-D pooling works on
    channels = torch.view_as_real(grid).flatten(-2).permute(0, 4, 1, 2, 3)
    kernel = (pool, pool, pool)
    pooled = F.avg_pool3d(pad_to_multiple(channels, kernel), kernel, stride=kernel)
    pooled = pooled.permute(0, 2, 3, 4, 1).flatten(1, 3)
    return torch.view_as_complex(pooled.unflatten(-1, (-1, 2)).contiguous())


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of ``x`` (``(B, N, H, D)``) by ``freqs`` (``(B' , N, D/2)``), in float32.

    The result is cast back to ``x``'s dtype.
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * freqs[:, :, None, :]).flatten(-2).to(x.dtype)
