"""HunyuanVideo causal 3D VAE: load it from any source the guide lists, encode pixels, decode latents.

Sources: the hunyuanvideo-community diffusers file (``vae/diffusion_pytorch_model.safetensors``), Tencent's
original ``pytorch_model.pt`` (tensors possibly wrapped in ``state_dict`` and prefixed ``vae.``; the names are
otherwise the diffusers ones), or a snapshot directory. The model is diffusers' ``AutoencoderKLHunyuanVideo``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLHunyuanVideo

from tuner_core import ModelLoadError
from tuner_core.weights import Transform
from tuner_framepack.encoders.identify import HUNYUAN_VAE, require_model
from tuner_framepack.encoders.locate import locate_weights, read_config
from tuner_framepack.encoders.streaming import build_empty, load_weights, open_weights, tensor_shapes
from tuner_framepack.encoders.vae_memory import configure_vae_memory

logger = logging.getLogger(__name__)

#: Latent scale of the HunyuanVideo VAE (no shift); latents are stored multiplied by it.
VAE_SCALING_FACTOR = 0.476986
VAE_SUBFOLDER = "vae"
VAE_PATTERNS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model-00001-of-*.safetensors",
    "pytorch_model.pt",
)
#: Real-model values the tensor shapes cannot tell (GroupNorm groups, compression ratios).
_UNSEEN_DEFAULTS: dict[str, Any] = {
    "norm_num_groups": 32,
    "act_fn": "silu",
    "scaling_factor": VAE_SCALING_FACTOR,
    "spatial_compression_ratio": 8,
    "temporal_compression_ratio": 4,
}


def vae_tensor_name(name: str, *, prefixed: bool) -> str | None:
    """File tensor name -> model name: strip Tencent's ``vae.`` prefix; with a prefix, drop other tensors."""
    if prefixed:
        return name[len("vae.") :] if name.startswith("vae.") else None
    return name


def vae_config_from_shapes(shapes: dict[str, tuple[int, ...]], where: str) -> dict[str, Any]:
    """The diffusers config of a HunyuanVideo VAE with these tensor shapes (by model name).

    Channels, depth, latent size and the mid-block attention come from the shapes; GroupNorm groups, the
    activation and the compression ratios cannot be seen and take the real model's values.
    """
    blocks = sorted({int(m[1]) for k in shapes if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))})
    resnets = {int(m[1]) for k in shapes if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k))}
    try:
        channels = [shapes[f"encoder.down_blocks.{i}.resnets.0.conv1.conv.weight"][0] for i in blocks]
        config = {
            "in_channels": shapes["encoder.conv_in.conv.weight"][1],
            "out_channels": shapes["decoder.conv_out.conv.weight"][0],
            "latent_channels": shapes["decoder.conv_in.conv.weight"][1],
            "block_out_channels": tuple(channels),
            "layers_per_block": len(resnets),
            "down_block_types": ("HunyuanVideoDownBlock3D",) * len(blocks),
            "up_block_types": ("HunyuanVideoUpBlock3D",) * len(blocks),
            "mid_block_add_attention": any(k.startswith("encoder.mid_block.attentions.") for k in shapes),
        }
    except KeyError as exc:
        raise ModelLoadError(
            f"{where}: the HunyuanVideo VAE tensor {exc.args[0]!r} is missing, so its configuration "
            "cannot be read from the file."
        ) from None
    return {**_UNSEEN_DEFAULTS, **config}


def load_vae(
    path: Path,
    *,
    dtype: torch.dtype = torch.float16,
    device: torch.device | str = "cpu",
    chunk_size: int | None = None,
    tiling: bool = False,
    tile_sample_min_size: int | None = None,
    option: str = "--vae",
    transform: Transform | None = None,
) -> AutoencoderKLHunyuanVideo:
    """Load the HunyuanVideo VAE from a diffusers file, an original ``.pt``, or a snapshot directory.

    The reference always runs it in float16 (``dtype`` may be float32 for CPU work). ``chunk_size``,
    ``tiling`` and ``tile_sample_min_size`` are the ``--vae_*`` memory options (see :mod:`.vae_memory`).
    Raises :class:`ModelLoadError` for a missing file, another model's weights or a mismatched layout.
    """
    location = locate_weights(Path(path), subfolder=VAE_SUBFOLDER, patterns=VAE_PATTERNS, option=option)
    with open_weights(location, option) as source:
        require_model(source, HUNYUAN_VAE, option)
        prefixed = any(k.startswith("vae.") for k in source.infos())

        def rename(name: str) -> str | None:
            return vae_tensor_name(name, prefixed=prefixed)

        config = read_config(location, model_types=("AutoencoderKLHunyuanVideo",))
        if config is None:
            config = vae_config_from_shapes(tensor_shapes(source, rename), source.description)
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        vae = build_empty(lambda: AutoencoderKLHunyuanVideo.from_config(config))
        load_weights(vae, source, rename, device=device, dtype=dtype, option=option, transform=transform)
    configure_vae_memory(vae, chunk_size=chunk_size, tiling=tiling, tile_sample_min_size=tile_sample_min_size)
    return vae


@torch.no_grad()
def vae_encode(
    vae: AutoencoderKLHunyuanVideo, pixels: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pixels (B, 3, T, H, W) in [-1, 1] -> scaled latents (B, C, (T-1)/4+1, H/8, W/8) in the VAE dtype.

    Samples the posterior (not its mode) and multiplies by the scaling factor, as the reference does.
    """
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    latents = vae.encode(pixels).latent_dist.sample(generator=generator)
    return latents * vae.config.scaling_factor


@torch.no_grad()
def vae_decode(vae: AutoencoderKLHunyuanVideo, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents (B, C, T, h, w) -> pixels (B, 3, 4(T-1)+1, 8h, 8w), roughly in [-1, 1], unclamped."""
    latents = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
    return vae.decode(latents).sample
