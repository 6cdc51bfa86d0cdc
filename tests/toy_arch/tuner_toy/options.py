"""The toy architecture's own options."""

from __future__ import annotations

from pathlib import Path

import attrs

from tuner_core import CacheLatentsOptions, CacheTextOptions, GenerateOptions, TrainOptions, option


@attrs.frozen(kw_only=True)
class ToyCacheLatentsOptions(CacheLatentsOptions):
    """``tuner cache-latents --arch toy``."""

    vae: Path = option(help="Toy autoencoder weights (.safetensors).")


@attrs.frozen(kw_only=True)
class ToyCacheTextOptions(CacheTextOptions):
    """``tuner cache-text --arch toy``."""

    text_encoder: Path = option(help="Toy text encoder weights (.safetensors).")


@attrs.frozen(kw_only=True)
class ToyTrainOptions(TrainOptions):
    """``tuner train --arch toy``."""

    dit: Path = option(help="Toy denoiser weights (.safetensors).")
    vae: Path | None = option(None, help="Toy autoencoder (for samples during training).")
    text_encoder: Path | None = option(None, help="Toy text encoder (for samples during training).")


@attrs.frozen(kw_only=True)
class ToyGenerateOptions(GenerateOptions):
    """``tuner generate --arch toy``."""

    dit: Path = option(help="Toy denoiser weights.")
    vae: Path = option(help="Toy autoencoder weights.")
    text_encoder: Path = option(help="Toy text encoder weights.")
    video_frames: int = option(9, help="Frames to generate (4n+1).")
