"""The VAE memory options: spatial tiling lowers the encode peak while staying close, chunking is exact.

(How much chunking saves depends on the convolution backend's workspace; benchmarks/vae_tiling.py prints it.)
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import HunyuanVideoCausalConv3d

from tuner_core import ConfigError
from tuner_framepack.encoders import configure_vae_memory, load_vae
from tuner_framepack.encoders.vae_memory import WidthChunkedCausalConv3d
from tuner_framepack.testing.tiny_encoders import TinyVaeFiles, save_tiny_vae
from tuner_framepack.testing.tiny_memory import peak_memory

F32 = torch.float32


@pytest.fixture(scope="module")
def vae_files(tmp_path_factory: pytest.TempPathFactory) -> TinyVaeFiles:
    return save_tiny_vae(tmp_path_factory.mktemp("vae"))


@pytest.fixture()
def vae(vae_files: TinyVaeFiles):
    return load_vae(vae_files.diffusers_file, dtype=F32)


def _noise(frames: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1


def _encode_mode(vae, pixels: torch.Tensor) -> tuple[int, torch.Tensor]:
    with torch.no_grad():
        return peak_memory(lambda: vae.encode(pixels).latent_dist.mode())


def test_tiling_lowers_the_encode_peak_and_stays_close(vae) -> None:
    clip, other = _noise(5, 256, 0), _noise(5, 256, 1)
    configure_vae_memory(vae)
    whole_peak, whole = _encode_mode(vae, clip)
    _, unrelated = _encode_mode(vae, other)
    configure_vae_memory(vae, tile_sample_min_size=128)  # latent tiles of 16, overlap 0.25
    tiled_peak, tiled = _encode_mode(vae, clip)
    assert tiled.shape == whole.shape == (1, 16, 2, 32, 32)
    assert tiled_peak < 0.8 * whole_peak, (tiled_peak, whole_peak)
    # Tiles see only part of the frame (and random weights exaggerate that), so tiled latents are not equal,
    # but they stay far closer to the whole-frame latents than the latents of another clip are.
    error = (tiled - whole).norm() / whole.norm()
    spread = (unrelated - whole).norm() / whole.norm()
    assert 0 < error < 0.4 * spread, (error, spread)


def test_tile_geometry_follows_the_reference(vae) -> None:
    configure_vae_memory(vae, tile_sample_min_size=128)
    assert vae.use_tiling and (vae.tile_sample_min_height, vae.tile_sample_min_width) == (128, 128)
    # stride 3/4 tile: latent tile 16, latent stride 12, blend 4 latents / 32 px
    assert (vae.tile_sample_stride_height, vae.tile_sample_stride_width) == (96, 96)
    configure_vae_memory(vae, tiling=True)  # the reference's default tile: 256 px
    assert vae.use_tiling and (vae.tile_sample_min_height, vae.tile_sample_stride_height) == (256, 192)
    configure_vae_memory(vae, tiling=True, tile_sample_min_size=64)  # a size wins over the default
    assert (vae.tile_sample_min_height, vae.tile_sample_stride_height) == (64, 48)
    configure_vae_memory(vae)
    assert not vae.use_tiling
    assert not vae.use_framewise_encoding and not vae.use_framewise_decoding
    with pytest.raises(ConfigError, match="vae_spatial_tile_sample_min_size"):
        configure_vae_memory(vae, tile_sample_min_size=100)
    with pytest.raises(ConfigError, match="vae_chunk_size"):
        configure_vae_memory(vae, chunk_size=0)


def test_frames_up_to_the_tile_are_not_tiled(vae) -> None:
    clip = _noise(1, 64, 2)
    configure_vae_memory(vae)
    _, whole = _encode_mode(vae, clip)
    configure_vae_memory(vae, tiling=True)  # 64 px <= 256 px: one tile, as in the reference
    _, tiled = _encode_mode(vae, clip)
    assert torch.equal(whole, tiled)


def test_chunked_causal_convs_are_exact(vae) -> None:
    clip = _noise(5, 128, 3)
    names = list(vae.state_dict())
    configure_vae_memory(vae)
    _, whole = _encode_mode(vae, clip)
    with torch.no_grad():
        frames = vae.decode(whole[:, :, :, :8, :8]).sample
    configure_vae_memory(vae, chunk_size=32)
    convs = [m for m in vae.modules() if isinstance(m, HunyuanVideoCausalConv3d)]
    assert convs and all(isinstance(m, WidthChunkedCausalConv3d) and m.chunk_size == 32 for m in convs)
    _, chunked = _encode_mode(vae, clip)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(whole[:, :, :, :8, :8]).sample, frames, atol=1e-5, rtol=1e-5)
    assert list(vae.state_dict()) == names  # the swap leaves parameters and their names alone
    configure_vae_memory(vae)  # back to whole convolutions
    assert not any(isinstance(m, WidthChunkedCausalConv3d) for m in vae.modules())


def test_long_clips_are_encoded_whole_in_time(vae) -> None:
    clip = _noise(21, 32, 4)  # more than diffusers' 16-frame window
    configure_vae_memory(vae)
    _, whole = _encode_mode(vae, clip)
    with torch.no_grad():
        direct = vae.quant_conv(vae.encoder(clip))[:, :16]  # the posterior mean of a single pass
        vae.use_framewise_encoding = True
        windowed = vae.encode(clip).latent_dist.mode()
    assert torch.equal(whole, direct)
    assert not torch.allclose(windowed, whole)  # diffusers' frame windows would have changed the latents


def test_load_vae_applies_the_memory_options(vae_files: TinyVaeFiles) -> None:
    vae = load_vae(vae_files.original_pt, dtype=F32, chunk_size=16, tile_sample_min_size=64)
    assert vae.use_tiling and vae.tile_sample_min_width == 64 and vae.tile_sample_stride_width == 48
    assert all(m.chunk_size == 16 for m in vae.modules() if isinstance(m, WidthChunkedCausalConv3d))
