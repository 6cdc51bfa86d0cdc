"""FramePack's options per command, and its dataset keys. Names and defaults follow the musubi guide.

Each command's class subclasses the core's options class of that command, so one typed object carries
the core's options and FramePack's own.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from tuner_core import (
    CacheLatentsOptions,
    CacheTextOptions,
    ConfigError,
    GenerateOptions,
    TrainOptions,
    at_least,
    option,
)

MODELS, VAE, SECTIONS = "models", "VAE memory", "sections"

#: Values of ``--dit_dtype``: the dtype the DiT's weights are held in (see ``components.dit_dtype``).
DIT_DTYPES = ("bfloat16", "float16", "float32")


def _positive_seconds(value: float) -> None:
    if not value > 0:
        raise ValueError(f"--video_seconds must be above 0, got {value!r}")


# Without slots: a mixin with slots cannot be combined with the core's (slotted) options classes.
@attrs.frozen(kw_only=True, slots=False)
class VaeMemoryOptions:
    """VAE memory knobs shared by every command that runs the VAE."""

    vae_chunk_size: int | None = option(
        None,
        help="Split the VAE's causal convolutions into chunks of this width (exact; lower saves memory).",
        group=VAE,
        validator=at_least(1),
    )
    vae_tiling: bool = option(False, help="Encode/decode the VAE in spatial tiles (256 px).", group=VAE)
    vae_spatial_tile_sample_min_size: int | None = option(
        None, help="Tile size in pixels for VAE tiling (enables tiling).", group=VAE, validator=at_least(32)
    )


@attrs.frozen(kw_only=True)
class FramePackCacheLatentsOptions(VaeMemoryOptions, CacheLatentsOptions):
    """``tuner cache-latents --arch framepack``."""

    vae: Path = option(
        help="HunyuanVideo VAE: diffusers file, original pytorch_model.pt, or snapshot directory.",
        group=MODELS,
    )
    image_encoder: Path = option(
        help="SigLIP image encoder: Comfy file, flux_redux_bfl file, or directory.", group=MODELS
    )
    latent_window_size: int = option(
        9,
        help="Latent frames per section for datasets without fp_latent_window_size.",
        group=SECTIONS,
        validator=at_least(1),
    )
    f1: bool = option(False, help="Cache the forward (FramePack-F1) section layout.", group=SECTIONS)
    one_frame: bool = option(
        False,
        help="Cache one-frame training items (image datasets with controls). Not available yet.",
        group=SECTIONS,
    )
    one_frame_no_2x: bool = option(False, help="One-frame: no 2x history context.", group=SECTIONS)
    one_frame_no_4x: bool = option(False, help="One-frame: no 4x history context.", group=SECTIONS)


@attrs.frozen(kw_only=True)
class FramePackCacheTextOptions(CacheTextOptions):
    """``tuner cache-text --arch framepack``."""

    text_encoder1: Path = option(
        help="LLaMA text encoder: Comfy file, first of 4 shards, or snapshot directory.", group=MODELS
    )
    text_encoder2: Path = option(
        help="CLIP-L text encoder: Comfy file, diffusers file, or directory.", group=MODELS
    )
    tokenizer1: Path | None = option(
        None, help="LLaMA tokenizer directory (default: found beside the weights).", group=MODELS
    )
    tokenizer2: Path | None = option(
        None, help="CLIP tokenizer directory (default: found beside the weights).", group=MODELS
    )
    fp8_llm: bool = option(False, help="Run the LLaMA encoder with float8_e4m3fn weights.", group=MODELS)


@attrs.frozen(kw_only=True)
class FramePackTrainOptions(VaeMemoryOptions, TrainOptions):
    """``tuner train --arch framepack``. Encoders are needed only for sampling during training."""

    dit: Path = option(
        help="Packed DiT: first shard of a -0000N-of-0000M set, snapshot directory, or single file.",
        group=MODELS,
    )
    vae: Path | None = option(None, help="VAE (for samples during training).", group=MODELS)
    text_encoder1: Path | None = option(None, help="LLaMA text encoder (for samples).", group=MODELS)
    text_encoder2: Path | None = option(None, help="CLIP-L text encoder (for samples).", group=MODELS)
    image_encoder: Path | None = option(None, help="SigLIP image encoder (for samples).", group=MODELS)
    dit_dtype: str | None = option(
        None,
        help="Dtype the DiT's weights are held in (default bfloat16, as the reference, whatever "
        "--mixed_precision says; float32 when training the whole DiT without --network_module).",
        choices=DIT_DTYPES,
        group=MODELS,
    )
    tokenizer1: Path | None = option(None, help="LLaMA tokenizer directory.", group=MODELS)
    tokenizer2: Path | None = option(None, help="CLIP tokenizer directory.", group=MODELS)
    fp8_llm: bool = option(
        False, help="Run the LLaMA encoder with float8_e4m3fn weights when sampling.", group=MODELS
    )
    latent_window_size: int = option(
        9, help="Latent frames per section (must match the caches).", group=SECTIONS, validator=at_least(1)
    )
    bulk_decode: bool = option(False, help="Decode sample videos in one VAE call.", group=SECTIONS)
    f1: bool = option(False, help="Sample with the forward (F1) layout.", group=SECTIONS)
    one_frame: bool = option(False, help="Sample one-frame inference. Not available yet.", group=SECTIONS)


@attrs.frozen(kw_only=True)
class FramePackGenerateOptions(VaeMemoryOptions, GenerateOptions):
    """``tuner generate --arch framepack``."""

    dit: Path | None = option(
        None,
        help="Packed DiT (the F1 DiT for --f1): first shard of a -0000N-of-0000M set, snapshot directory, "
        "or single file. Needed to generate and for --save_merged_model.",
        group=MODELS,
    )
    vae: Path | None = option(
        None,
        help="HunyuanVideo VAE: diffusers file, original pytorch_model.pt, or snapshot directory. Needed to "
        "generate and for --latent_path.",
        group=MODELS,
    )
    text_encoder1: Path | None = option(
        None, help="LLaMA text encoder: Comfy file, first of 4 shards, or snapshot directory.", group=MODELS
    )
    text_encoder2: Path | None = option(
        None, help="CLIP-L text encoder: Comfy file, diffusers file, or directory.", group=MODELS
    )
    image_encoder: Path | None = option(
        None, help="SigLIP image encoder: Comfy file, flux_redux_bfl file, or directory.", group=MODELS
    )
    dit_dtype: str | None = option(
        None,
        help="Dtype the DiT's weights are held in (default bfloat16, as the reference).",
        choices=DIT_DTYPES,
        group=MODELS,
    )
    tokenizer1: Path | None = option(
        None, help="LLaMA tokenizer directory (default: found beside the weights).", group=MODELS
    )
    tokenizer2: Path | None = option(
        None, help="CLIP tokenizer directory (default: found beside the weights).", group=MODELS
    )
    fp8_llm: bool = option(False, help="Run the LLaMA encoder with float8_e4m3fn weights.", group=MODELS)
    image_path: str | None = option(
        None,
        help="Start image the video begins with (required to generate). Per section, by time index or "
        'from the end: "0:first.png;;;-1:last.png".',
        group=SECTIONS,
    )
    end_image_path: Path | None = option(
        None, help="End image the video ends with (ignored with --f1, as in the reference).", group=SECTIONS
    )
    video_seconds: float = option(
        5.0,
        help="Video length in seconds, made of round(seconds * 30 / (4 * --latent_window_size)) sections "
        "(counted at 30 fps whatever --fps is, as the reference).",
        group=SECTIONS,
        validator=lambda _instance, _field, value: _positive_seconds(value),
    )
    video_sections: int | None = option(
        None,
        help="Number of sections, 4 * --latent_window_size frames each (overrides --video_seconds).",
        group=SECTIONS,
        validator=at_least(1),
    )
    latent_window_size: int = option(
        9,
        help="Latent frames per section (each 4 video frames). A --latent_path file records its own.",
        group=SECTIONS,
        validator=at_least(1),
    )
    embedded_cfg_scale: float = option(
        10.0,
        help="Distilled guidance the DiT is conditioned on (not classifier-free: see --guidance_scale).",
        group=SECTIONS,
    )
    guidance_rescale: float = option(
        0.0,
        help="Rescale of classifier-free guidance, 0 to 1 (acts with --guidance_scale above 1).",
        group=SECTIONS,
        validator=at_least(0),
    )
    flow_shift: float | None = option(
        None,
        help="Shift of the sigma schedule, above 0 (default: from the resolution, at most 7).",
        group=SECTIONS,
    )
    sample_solver: str = option(
        "unipc",
        help="Solver: unipc (FramePack's own, the reference's) or euler (plain flow-matching steps).",
        choices=("unipc", "euler"),
        group=SECTIONS,
    )
    f1: bool = option(
        False,
        help="Forward (FramePack-F1) layout: sections follow the start image in time order; needs the F1 "
        "DiT.",
        group=SECTIONS,
    )
    latent_paddings: str | None = option(
        None,
        help="Blank windows between the start image and each section of the inverted layout, in "
        'generation order (the time-last section first), e.g. "3,2,1,0" (default: the reference\'s; '
        "ignored with --f1).",
        group=SECTIONS,
    )
    custom_system_prompt: str | None = option(
        None, help="System prompt of the LLaMA template (default: HunyuanVideo's).", group=SECTIONS
    )
    bulk_decode: bool = option(
        False,
        help="Decode all frames in one VAE call (more memory; default: chunk by chunk, as the reference).",
        group=SECTIONS,
    )

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()  # the core's checks of the generate options
        if self.latent_paddings is not None:
            from tuner_framepack.generation.section_count import parse_latent_paddings

            parse_latent_paddings(self.latent_paddings)  # raises the one-line error
        if self.guidance_rescale > 1:
            raise ConfigError(f"--guidance_rescale must be between 0 and 1, got {self.guidance_rescale}")


@attrs.frozen(kw_only=True)
class FramePackDatasetOptions:
    """Dataset TOML keys FramePack adds to ``[[datasets]]`` tables."""

    fp_latent_window_size: int | None = option(
        None, help="Latent frames per section (default: --latent_window_size, 9).", validator=at_least(1)
    )
    fp_1f_clean_indices: list[int] | None = option(None, help="One-frame: indices of the control latents.")
    fp_1f_target_index: int | None = option(None, help="One-frame: index of the target latent.")
    fp_1f_no_post: bool = option(False, help="One-frame: no zero post latent.")
