"""FramePack as a tuner architecture: what it declares to the core, and the calls the core makes."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs
import torch

from tuner_core import (
    Architecture,
    CacheRecord,
    ConfigError,
    MediaItem,
    MediaRules,
    MediaSample,
    ModelLayout,
    SampleRequest,
    TrainOptions,
)
from tuner_core.weights import Transform
from tuner_framepack import cache_format
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
        # The reference splits N over the lists as N//2 double and (N - N//2)*2 + 1 single blocks, so at
        # most 38 fit (19 + 39); its docs allow 36 in training.
        max_blocks_to_swap_training=36,
        max_blocks_to_swap_inference=38,
    )
    cache_version = "1"
    cache_short_name = cache_format.ARCHITECTURE_SHORT
    can_sample = True

    # -- models ------------------------------------------------------------------------------------------

    def components(self, command: str, options: Any) -> tuple[str, ...]:
        if command == "generate" and options.save_merged_model is not None:
            return ("dit",)  # merging LoRA files into the DiT needs nothing else
        if command == "generate" and options.latent_path:
            return ("vae",)  # decoding saved latents needs nothing else
        return {
            "cache-latents": ("vae", "image_encoder"),
            "cache-text": ("text_encoder1", "text_encoder2"),
            "train": ("dit",),
            "generate": ("dit", "vae", "text_encoder1", "text_encoder2", "image_encoder"),
        }[command]

    def load_component(
        self, component: str, options: Any, device: torch.device, transform: Transform | None = None
    ) -> Any:
        from tuner_framepack.components import load_component

        return load_component(component, options, device, transform)

    def skeleton(self) -> torch.nn.Module:
        """The released 13B packed DiT (its default config) on the meta device."""
        from tuner_framepack.dit.config import DiTConfig
        from tuner_framepack.dit.model import HunyuanVideoTransformer3DModelPacked

        with torch.device("meta"):
            return HunyuanVideoTransformer3DModelPacked(DiTConfig())

    def check_options(self, command: str, options: Any) -> list[str]:
        from tuner_framepack.components import option_problems

        return option_problems(command, self.components(command, options), options)

    def cache_identity(self, command: str, options: Any) -> str:
        from tuner_core.weights import file_identity

        if command == "cache-latents":
            return "|".join(
                (
                    file_identity(options.vae),
                    file_identity(options.image_encoder),
                    f"window={options.latent_window_size}",
                    f"f1={options.f1}",
                    f"one_frame={options.one_frame}:{options.one_frame_no_2x}:{options.one_frame_no_4x}",
                )
            )
        return "|".join(
            (
                file_identity(options.text_encoder1),
                file_identity(options.text_encoder2),
                f"fp8={options.fp8_llm}",
            )
        )

    def sample_components(self, options: Any) -> tuple[str, ...]:
        return ("vae", "text_encoder1", "text_encoder2", "image_encoder")

    # -- generation --------------------------------------------------------------------------------------

    def generation_request(self, options: Any) -> SampleRequest:
        return attrs.evolve(
            super().generation_request(options),
            guidance=options.embedded_cfg_scale,
            image_path=options.image_path,
            end_image_path=options.end_image_path,
            video_seconds=options.video_seconds,
            video_sections=options.video_sections,
            flow_shift=options.flow_shift,
            extra={
                "latent_window_size": options.latent_window_size,
                "guidance_rescale": options.guidance_rescale,
                "sample_solver": options.sample_solver,
                "f1": options.f1,
            },
        )

    def check_request(self, request: SampleRequest, options: Any) -> list[str]:
        from tuner_framepack.generation.jobs import framepack_job, generation_settings

        try:
            framepack_job(request, generation_settings(options), training=isinstance(options, TrainOptions))
        except ConfigError as exc:
            return [str(exc)]
        return []

    def sample(
        self,
        models: Mapping[str, Any],
        requests: Sequence[SampleRequest],
        options: Any,
        generators: Sequence[torch.Generator],
    ) -> Iterator[torch.Tensor]:
        from tuner_framepack.generation.jobs import generation_settings
        from tuner_framepack.generation.pipeline import generate_latents

        training = isinstance(options, TrainOptions)
        return generate_latents(models, requests, generators, generation_settings(options), training=training)

    def decode_latents(
        self,
        models: Mapping[str, Any],
        latents: torch.Tensor,
        options: Any,
        sink: Callable[[torch.Tensor], None],
    ) -> None:
        from tuner_framepack.generation.jobs import generation_settings
        from tuner_framepack.generation.pipeline import decode_latents

        decode_latents(models["vae"], latents, sink, generation_settings(options))

    # -- caching -----------------------------------------------------------------------------------------

    def latent_cache_parts(self, item: MediaItem, options: Any) -> int:
        from tuner_framepack.caching import window_size

        return cache_format.section_count(item, window_size(item, options))

    def encode_latents(
        self, samples: Sequence[MediaSample], models: Mapping[str, Any], options: Any
    ) -> list[list[CacheRecord]]:
        from tuner_framepack.caching import encode_latents

        return encode_latents(samples, models, options)

    def encode_text(
        self, captions: Sequence[str], models: Mapping[str, Any], options: Any
    ) -> list[dict[str, torch.Tensor]]:
        from tuner_framepack.caching import encode_text

        return encode_text(captions, models, options)

    def text_cache_metadata(self, caption: str) -> dict[str, str]:
        return cache_format.text_cache_metadata(caption)

    # -- training ----------------------------------------------------------------------------------------

    def validate_cache(
        self,
        path: Path,
        header: Mapping[str, tuple[str, tuple[int, ...]]],
        options: Any,
        dataset_options: Any,
    ) -> None:
        own = dataset_options.fp_latent_window_size if dataset_options is not None else None
        expected = own if own is not None else options.latent_window_size
        cache_format.check_window_size(str(path), cache_format.header_window_size(header), expected)

    def batch_item(
        self, latent_tensors: Mapping[str, torch.Tensor], text_tensors: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return cache_format.batch_tensors(latent_tensors, text_tensors)

    def predict(
        self,
        model: torch.nn.Module,
        batch: Mapping[str, torch.Tensor],
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        options: Any,
    ) -> torch.Tensor:
        from tuner_framepack.training import predict

        return predict(model, batch, noisy_latents, timesteps, options)

    def network_metadata(self) -> dict[str, str]:
        return {
            "ss_base_model_version": "framepack",
            "modelspec.architecture": "framepack/lora",
            "modelspec.implementation": "https://github.com/lllyasviel/FramePack",
        }

    # -- demo --------------------------------------------------------------------------------------------

    def demo(self, directory: Path, *, quick: bool = False) -> Mapping[str, Mapping[str, Any]]:
        from tuner_framepack.demo import FULL, QUICK, demo_plan

        return demo_plan(directory, QUICK if quick else FULL)

    def demo_notes(self) -> list[str]:
        from tuner_framepack.demo import NOTES

        return list(NOTES)
