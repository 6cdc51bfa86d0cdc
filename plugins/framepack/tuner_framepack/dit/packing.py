"""Clean-latent packing: history latents at 1x, 2x and 4x compression become tokens before the noisy ones.

The image stream is ``[4x history | 2x history | clean 1x (start image, adjacent frame) | noisy]``, each
group in (t, h, w) raster order. The 2x and 4x groups are replicate-padded at the end of T, H, W to
multiples of their kernels ``(2, 4, 4)`` / ``(4, 8, 8)`` before the convolution; their RoPE is the pooled
table of :func:`~tuner_framepack.dit.rope.rope_tokens`.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from tuner_framepack.dit.rope import pad_to_multiple, rope_tokens

#: Conv kernel (= stride) of each history group, and the RoPE pooling factor on the post-patch grid.
KERNELS = {"clean": (1, 2, 2), "2x": (2, 4, 4), "4x": (4, 8, 8)}
POOL = {"clean": 1, "2x": 2, "4x": 4}


class HistoryPatchEmbed(nn.Module):
    """``clean_x_embedder``: one Conv3d per history compression (keys ``proj``, ``proj_2x``, ``proj_4x``)."""

    def __init__(self, in_channels: int, dim: int) -> None:
        """:param in_channels: latent channels; :param dim: model width."""
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=KERNELS["clean"], stride=KERNELS["clean"])
        self.proj_2x = nn.Conv3d(in_channels, dim, kernel_size=KERNELS["2x"], stride=KERNELS["2x"])
        self.proj_4x = nn.Conv3d(in_channels, dim, kernel_size=KERNELS["4x"], stride=KERNELS["4x"])

    def forward(self, latents: torch.Tensor, group: str) -> torch.Tensor:
        """Tokens ``(B, N, dim)`` of one history group (``"clean"``, ``"2x"``, ``"4x"``), (t, h, w) raster order."""
        if group == "clean":
            return self.proj(latents).flatten(2).transpose(1, 2)
        conv = self.proj_2x if group == "2x" else self.proj_4x
        return patchify_linear(pad_to_multiple(latents, KERNELS[group]), conv)


def patchify_linear(latents: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """A Conv3d whose stride equals its kernel, computed as one matmul over the non-overlapping patches.

    Same result as ``conv(latents)`` flattened to tokens; for the large 2x/4x kernels the CPU convolution
    falls back to a slow path, while a patch matmul stays fast on every device.
    """
    batch, channels, frames, height, width = latents.shape
    kt, kh, kw = conv.kernel_size
    patches = latents.reshape(batch, channels, frames // kt, kt, height // kh, kh, width // kw, kw)
    patches = patches.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(batch, -1, channels * kt * kh * kw)
    return F.linear(patches, conv.weight.flatten(1), conv.bias)


@attrs.frozen
class TokenGroup:
    """One group of image-stream tokens and its RoPE table."""

    tokens: torch.Tensor
    freqs: torch.Tensor


def frame_index_rows(
    indices: torch.Tensor | None, batch: int, frames: int, device: torch.device
) -> torch.Tensor:
    """Frame indices as ``(B', frames)``: ``B' = 1`` when all samples share them (so RoPE is computed once).

    ``None`` means ``0 .. frames-1``; a 1-D tensor is shared by the batch; ``(B, frames)`` is per sample.
    """
    if indices is None:
        return torch.arange(frames, device=device)[None]
    rows = indices.to(device)
    if rows.dim() == 1:
        rows = rows[None]
    if rows.dim() != 2 or rows.shape[1] != frames or rows.shape[0] not in (1, batch):
        raise ValueError(
            f"frame indices must be ({batch}, {frames}) or ({frames},), got {tuple(indices.shape)}"
        )
    if rows.shape[0] > 1 and bool((rows == rows[:1]).all()):
        rows = rows[:1]
    return rows


def history_group(
    embedder: HistoryPatchEmbed,
    group: str,
    latents: torch.Tensor,
    indices: torch.Tensor | None,
    grid: tuple[int, int],
    axes_dim: tuple[int, int, int],
    theta: float,
) -> TokenGroup:
    """Embed one history group and build its (pooled) RoPE table.

    :param grid: ``(Hp, Wp)``, the noisy latents' post-patch grid every group's positions live on.
    """
    if indices is None:
        raise ValueError(f"history latents of group {group!r} were given without their frame indices")
    if latents.shape[-2:] != (grid[0] * 2, grid[1] * 2):
        raise ValueError(
            f"history latents of group {group!r} must match the noisy latents' height and width "
            f"{(grid[0] * 2, grid[1] * 2)}, got {tuple(latents.shape[-2:])}"
        )
    rows = frame_index_rows(indices, latents.shape[0], latents.shape[2], latents.device)
    tokens = embedder(latents, group)
    freqs = rope_tokens(rows, grid[0], grid[1], axes_dim, theta, pool=POOL[group])
    return TokenGroup(tokens, freqs)
