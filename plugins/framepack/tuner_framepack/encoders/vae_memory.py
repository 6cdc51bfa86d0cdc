"""The VAE memory options (``--vae_chunk_size``, ``--vae_tiling``, ``--vae_spatial_tile_sample_min_size``)
mapped onto diffusers' ``AutoencoderKLHunyuanVideo``.

- Whole clips are encoded and decoded in one pass along time, as the reference's causal VAE does: diffusers'
  frame-wise (temporal) tiling is switched off because it blends overlapping frame windows and so changes the
  latents of any clip longer than 16 frames.
- Spatial tiling uses a tile of N pixels (latent tile N/8) and an overlap of a quarter tile, the reference's
  ``tile_overlap_factor`` of 0.25: stride 3N/4 px, blend N/4 px (N/32 latents).
- The chunk size splits every causal 3D convolution into slices along the width axis, like the reference's
  chunked ``CausalConv3d``; unlike tiling this is exact, it only bounds the size of each convolution call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLHunyuanVideo
from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import HunyuanVideoCausalConv3d

from tuner_core import ConfigError

#: The reference's tile when ``--vae_tiling`` is given without a size (its VAE config's sample_size).
DEFAULT_TILE_SAMPLE_SIZE = 256
#: Fraction of a tile shared with its neighbour (the reference's ``tile_overlap_factor``).
TILE_OVERLAP = 0.25


class WidthChunkedCausalConv3d(HunyuanVideoCausalConv3d):
    """A causal 3D convolution evaluated in slices of at most ``chunk_size`` input columns.

    Each slice carries the kernel's extra columns, so every output column is computed exactly once from the
    same inputs as the unsliced convolution: the result is identical, only the per-call working set shrinks.
    """

    chunk_size: int

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Pad causally, then convolve width slice by width slice and join the slices."""
        padded = F.pad(hidden_states, self.time_causal_padding, mode=self.pad_mode)
        conv = self.conv
        kernel, stride = conv.kernel_size[2], conv.stride[2]
        out_width = (padded.shape[-1] - kernel) // stride + 1
        columns = max(1, self.chunk_size // stride)  # output columns per slice
        if out_width <= columns or conv.padding != (0, 0, 0) or conv.dilation != (1, 1, 1):
            return conv(padded)
        pieces = []
        for first in range(0, out_width, columns):
            last = min(first + columns, out_width)  # exclusive
            pieces.append(conv(padded[..., first * stride : (last - 1) * stride + kernel]))
        return torch.cat(pieces, dim=-1)


def set_causal_conv_chunk_size(vae: AutoencoderKLHunyuanVideo, chunk_size: int | None) -> None:
    """Make every causal conv of ``vae`` work in width slices of ``chunk_size`` columns (``None``: whole)."""
    if chunk_size is not None and chunk_size < 1:
        raise ConfigError(f"--vae_chunk_size must be at least 1, got {chunk_size}.")
    for module in vae.modules():
        if not isinstance(module, HunyuanVideoCausalConv3d):
            continue
        if chunk_size is None:
            module.__class__ = HunyuanVideoCausalConv3d
        else:
            # Swapping the class keeps the module's parameters and state-dict names untouched.
            module.__class__ = WidthChunkedCausalConv3d
            module.chunk_size = chunk_size


def set_spatial_tiling(vae: AutoencoderKLHunyuanVideo, tile_sample_size: int | None) -> None:
    """Tile encode/decode spatially with ``tile_sample_size`` px tiles (``None``: no tiling)."""
    if tile_sample_size is None:
        vae.disable_tiling()
        return
    if tile_sample_size < 16 or tile_sample_size % 8:
        raise ConfigError(
            f"--vae_spatial_tile_sample_min_size must be a multiple of 8 and at least 16, got {tile_sample_size}."
        )
    # The stride is kept a multiple of 8 px so latent and pixel tiles stay aligned.
    stride = max(8, int(tile_sample_size * (1 - TILE_OVERLAP)) // 8 * 8)
    vae.enable_tiling(
        tile_sample_min_height=tile_sample_size,
        tile_sample_min_width=tile_sample_size,
        tile_sample_stride_height=stride,
        tile_sample_stride_width=stride,
    )


def configure_vae_memory(
    vae: AutoencoderKLHunyuanVideo,
    *,
    chunk_size: int | None = None,
    tiling: bool = False,
    tile_sample_min_size: int | None = None,
) -> None:
    """Apply the three VAE memory options; a tile size implies tiling, as in the reference.

    Always switches diffusers' frame-wise temporal tiling off (see the module docstring).
    """
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    set_causal_conv_chunk_size(vae, chunk_size)
    if tile_sample_min_size is not None:
        set_spatial_tiling(vae, tile_sample_min_size)
    else:
        set_spatial_tiling(vae, DEFAULT_TILE_SAMPLE_SIZE if tiling else None)
