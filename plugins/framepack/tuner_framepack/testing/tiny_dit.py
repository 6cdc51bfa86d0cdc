"""A tiny random-weight FramePack DiT, saved in each published on-disk format.

The weights are random but scaled so that every input (latents, each history group, timestep, guidance,
text, pooled text, image embedding, frame indices) visibly changes the output, which makes the model a
useful oracle for comparisons; zero-initialised gates would hide most of the network.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import torch
from torch import nn

from tuner_core.weights import save_json, save_safetensors, save_sharded_safetensors
from tuner_framepack.dit.config import DiTConfig
from tuner_framepack.dit.model import HunyuanVideoTransformer3DModelPacked

#: Name of the diffusers shards and index (``lllyasviel/FramePackI2V_HY``).
DIFFUSERS_STEM = "diffusion_pytorch_model"
#: Name of Kijai's single-file repack.
SINGLE_FILE_NAME = "FramePackI2V_HY_bf16.safetensors"
#: ``_class_name`` written to ``config.json``, as in the published checkpoint.
CONFIG_CLASS_NAME = "HunyuanVideoTransformer3DModelPacked"


def tiny_dit_config(**overrides: object) -> DiTConfig:
    """A config small enough for CPU tests: 2 heads of 32, 2 double and 2 single blocks, 2 refiner blocks."""
    values = {
        "num_attention_heads": 2,
        "attention_head_dim": 32,
        "num_layers": 2,
        "num_single_layers": 2,
        "num_refiner_layers": 2,
        "text_embed_dim": 40,
        "pooled_projection_dim": 24,
        "image_proj_dim": 48,
        "rope_axes_dim": (8, 12, 12),
    }
    values.update(overrides)
    return DiTConfig(**values)


def randomize_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every weight with seeded random values of unit-scale effect; returns ``model``.

    Linear and conv weights are ``N(0, 1/fan_in)``, biases ``N(0, 0.1^2)``, norm weights ``1 + N(0, 0.1^2)``,
    so activations keep their size through the blocks and every gate is far from zero.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                values = 0.1 * torch.randn(param.shape, generator=generator)
            elif param.dim() == 1:  # RMSNorm / LayerNorm weight
                values = 1.0 + 0.1 * torch.randn(param.shape, generator=generator)
            else:
                fan_in = param[0].numel()
                values = torch.randn(param.shape, generator=generator) / fan_in**0.5
            param.copy_(values.to(param.dtype))
    return model


def build_tiny_dit(config: DiTConfig | None = None, *, seed: int = 0) -> HunyuanVideoTransformer3DModelPacked:
    """A float32 tiny DiT with :func:`randomize_weights` weights."""
    model = HunyuanVideoTransformer3DModelPacked(config or tiny_dit_config())
    return randomize_weights(model, seed).eval()


def config_json(config: DiTConfig) -> dict[str, object]:
    """The ``config.json`` content of a checkpoint with ``config`` (published key names and class name)."""
    return {"_class_name": CONFIG_CLASS_NAME, **config.to_dict()}


@attrs.frozen
class DiffusersFiles:
    """Paths of a checkpoint saved in the diffusers layout (a Hugging Face snapshot directory)."""

    directory: Path
    shards: tuple[Path, ...]
    index: Path
    config: Path


def save_diffusers_layout(
    model: nn.Module, config: DiTConfig, directory: str | Path, *, num_shards: int = 3
) -> DiffusersFiles:
    """Save ``model`` as ``diffusion_pytorch_model-0000N-of-0000M.safetensors`` shards + index + ``config.json``."""
    directory = Path(directory)
    shards, index = save_sharded_safetensors(
        model.state_dict(), directory, num_shards=num_shards, stem=DIFFUSERS_STEM, metadata={"format": "pt"}
    )
    config_path = save_json(config_json(config), directory / "config.json")
    return DiffusersFiles(directory=directory, shards=tuple(shards), index=index, config=config_path)


def save_single_file(
    model: nn.Module, directory: str | Path, *, name: str = SINGLE_FILE_NAME, dtype: torch.dtype | None = None
) -> Path:
    """Save ``model`` as one safetensors file (Kijai's layout: same keys, no config), optionally cast."""
    state = model.state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return save_safetensors(state, Path(directory) / name, metadata={"format": "pt"})


def save_tiny_dit_diffusers(
    directory: str | Path, *, config: DiTConfig | None = None, seed: int = 0, num_shards: int = 3
) -> DiffusersFiles:
    """Build a tiny random DiT and save it in the diffusers shard layout under ``directory``."""
    config = config or tiny_dit_config()
    return save_diffusers_layout(build_tiny_dit(config, seed=seed), config, directory, num_shards=num_shards)


def save_tiny_dit_single_file(
    directory: str | Path, *, config: DiTConfig | None = None, seed: int = 0, dtype: torch.dtype | None = None
) -> Path:
    """Build a tiny random DiT and save it as one Kijai-style file in ``directory``."""
    return save_single_file(build_tiny_dit(config or tiny_dit_config(), seed=seed), directory, dtype=dtype)


def tiny_dit_inputs(
    config: DiTConfig,
    *,
    batch: int = 1,
    frames: int = 3,
    height: int = 12,
    width: int = 10,
    text_lengths: tuple[int, ...] | None = None,
    text_len: int = 16,
    image_tokens: int = 9,
    clean: bool = True,
    history_2x: bool = True,
    history_4x: bool = True,
    seed: int = 1,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Random FramePack inputs (keyword names of the model's forward) in the I2V index layout.

    Frame indices follow the demo's split ``[start, padding, section, post, 2x, 4x]`` with padding 1:
    clean 1x = (start 0, post), 2x = 2 frames, 4x = 16 frames after the section.

    :param text_lengths: valid text tokens per sample (default: all ``text_len``); the mask is a prefix.
    """
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(dtype)

    lengths = text_lengths or (text_len,) * batch
    start = 1 + 1  # start frame + one padding section frame
    section = torch.arange(start, start + frames)
    post = start + frames
    indices = {
        "latent_indices": section,
        "clean_latent_indices": torch.tensor([0, post]),
        "clean_latent_2x_indices": torch.arange(post + 1, post + 3),
        "clean_latent_4x_indices": torch.arange(post + 3, post + 19),
    }
    mask = torch.arange(text_len)[None, :] < torch.tensor(lengths)[:, None]
    inputs = {
        "hidden_states": randn(batch, config.in_channels, frames, height, width),
        "timestep": torch.rand(batch, generator=generator) * 1000,
        "encoder_hidden_states": randn(batch, text_len, config.text_embed_dim),
        "encoder_attention_mask": mask,
        "pooled_projections": randn(batch, config.pooled_projection_dim),
        "guidance": torch.full((batch,), 10000.0),
        "image_embeddings": randn(batch, image_tokens, config.image_proj_dim),
        "latent_indices": indices["latent_indices"][None].expand(batch, -1),
    }
    if clean:
        inputs["clean_latents"] = randn(batch, config.in_channels, 2, height, width)
        inputs["clean_latent_indices"] = indices["clean_latent_indices"][None].expand(batch, -1)
    if history_2x:
        inputs["clean_latents_2x"] = randn(batch, config.in_channels, 2, height, width)
        inputs["clean_latent_2x_indices"] = indices["clean_latent_2x_indices"][None].expand(batch, -1)
    if history_4x:
        inputs["clean_latents_4x"] = randn(batch, config.in_channels, 16, height, width)
        inputs["clean_latent_4x_indices"] = indices["clean_latent_4x_indices"][None].expand(batch, -1)
    return inputs
