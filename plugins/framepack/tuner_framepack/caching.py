"""FramePack's cache encoders: whole clips through the VAE, frame 0 through SigLIP, then one file per section."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from tuner_core import CacheRecord, MediaItem, MediaSample, NotAvailableError
from tuner_framepack import cache_format
from tuner_framepack.sections import clip_sections, plan_sections


def window_size(item: MediaItem, options: Any) -> int:
    """The item's dataset ``fp_latent_window_size``, else ``--latent_window_size`` (9)."""
    own = item.dataset_options.fp_latent_window_size if item.dataset_options is not None else None
    return own if own is not None else options.latent_window_size


def posterior_generator(item: MediaItem, vae: torch.nn.Module) -> torch.Generator:
    """The generator the VAE posterior of ``item`` is sampled with: seeded from the clip, so caching the same
    clip twice writes the same latents (the reference draws from the global RNG)."""
    key = f"{item.stem}:{item.frame_position}:{item.frame_count}:{item.bucket}".encode()
    device = next(vae.parameters()).device
    return torch.Generator(device=device).manual_seed(zlib.crc32(key))


def _pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float (1, 3, F, H, W) in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0


@torch.no_grad()
def encode_latents(
    samples: Sequence[MediaSample], models: Mapping[str, Any], options: Any
) -> list[list[CacheRecord]]:
    """Every section cache of every clip of ``samples`` (the reference's ``fpack_cache_latents.py``)."""
    from tuner_framepack.encoders import encode_image, vae_encode

    if options.one_frame:
        raise NotAvailableError("--one_frame caching is not implemented yet in tuner's FramePack plugin")
    vae, image_encoder = models["vae"], models["image_encoder"]
    records = []
    for sample in samples:
        item = sample.item
        if not item.is_video:
            raise NotAvailableError(
                f"{item.source}: FramePack caches video datasets (image datasets are for --one_frame training)"
            )
        window = window_size(item, options)
        plan = plan_sections(item.frame_count, window)
        latents = vae_encode(
            vae, _pixels(sample.pixels[: plan.aligned_frame_count]), posterior_generator(item, vae)
        )
        latents = latents[0].float().cpu()
        image_embeddings = encode_image(sample.pixels[0], image_encoder)[0].float().cpu()
        sections = clip_sections(latents, window, f1=options.f1)
        records.append([cache_format.section_record(item, s, image_embeddings) for s in sections])
    return records


@torch.no_grad()
def encode_text(
    captions: Sequence[str], models: Mapping[str, Any], options: Any
) -> list[dict[str, torch.Tensor]]:
    """``llama_vec_*``, ``llama_attention_mask`` and ``clip_l_pooler_*`` of every caption."""
    from tuner_framepack.components import encode_caption

    out = []
    for caption in captions:
        prompt = encode_caption(models, caption)
        # Stored in float16 whatever device encoded them, as the reference's caches are.
        out.append(
            cache_format.text_tensors(
                prompt.llama_vec.half().cpu(),
                prompt.llama_attention_mask.cpu(),
                prompt.clip_l_pooler.half().cpu(),
            )
        )
    return out
