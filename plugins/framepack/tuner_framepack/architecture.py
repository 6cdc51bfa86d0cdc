"""FramePack as a tuner architecture: what it declares to the core, and the calls the core makes."""

from __future__ import annotations

from typing import ClassVar

from tuner_core import Architecture, MediaRules, ModelLayout
from tuner_framepack.options import (
    FramePackCacheLatentsOptions,
    FramePackCacheTextOptions,
    FramePackDatasetOptions,
    FramePackGenerateOptions,
    FramePackTrainOptions,
)

#: Module classes whose Linear layers LoRA / LyCORIS wrap; the names are the reference tools' own,
#: so LyCORIS presets written for FramePack (``lycoris.kohya``) keep working.
DOUBLE_BLOCK = "HunyuanVideoTransformerBlock"
SINGLE_BLOCK = "HunyuanVideoSingleTransformerBlock"


class FramePackArchitecture(Architecture):
    """FramePack I2V (HunyuanVideo packed DiT, HunyuanVideo VAE, LLaMA + CLIP-L text, SigLIP image)."""

    name: ClassVar[str] = "framepack"
    aliases: ClassVar[tuple[str, ...]] = ("fpack",)
    title: ClassVar[str] = "FramePack image-to-video (next-frame-section packing, HunyuanVideo DiT)"
    options = {
        "cache-latents": FramePackCacheLatentsOptions,
        "cache-text": FramePackCacheTextOptions,
        "train": FramePackTrainOptions,
        "generate": FramePackGenerateOptions,
    }
    dataset_options = FramePackDatasetOptions
    media = MediaRules(fps=30.0, frame_multiple=4, bucket_step=16, min_frames=37)
    layout = ModelLayout(
        block_lists=("transformer_blocks", "single_transformer_blocks"),
        network_targets=(DOUBLE_BLOCK, SINGLE_BLOCK),
        network_exclude=(r".*(norm).*",),
        keep_high_precision=(
            r"^x_embedder\.",
            r"^clean_x_embedder\.",
            r"^context_embedder\.",
            r"^time_text_embed\.",
            r"^image_projection\.",
            r"norm",
            r"^proj_out\.",
        ),
        network_prefix="lora_unet",
    )
    cache_version = "1"
