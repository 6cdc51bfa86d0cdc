"""FramePack generation in phases, each model loaded once for all jobs and freed when its phase ends.

1. the text encoders encode every distinct prompt (kept in ``models.memo`` for later calls), then go;
2. the VAE and SigLIP encode every start / end / section image; SigLIP goes, the VAE waits on the CPU;
3. the DiT generates every job's sections (only the latents are kept: they are small);
4. the caller decodes each job's latents through :func:`decode_latents`, run by run of frames.

The 8B LLaMA and the 13B DiT are never in memory together, and a ``--from_file`` of any length loads
each model once.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuner_core import Components, SampleRequest
from tuner_core.media import load_image, resize_to_cover
from tuner_core.sampling import sample_flow, shifted_sigmas
from tuner_framepack.generation.conditioning import ImageConditioning, SectionConditioner
from tuner_framepack.generation.jobs import FramePackJob, GenerationSettings, framepack_job
from tuner_framepack.generation.model_call import ModelCallSettings
from tuner_framepack.generation.section_loop import generate_sections
from tuner_framepack.generation.section_plan import generation_plan
from tuner_framepack.generation.streamed_decode import decode_streamed

log = logging.getLogger(__name__)

TEXT_ENCODERS = ("text_encoder1", "text_encoder2")


def generate_latents(
    models: Components,
    requests: Sequence[SampleRequest],
    generators: Sequence[torch.Generator],
    settings: GenerationSettings,
    *,
    training: bool,
) -> Iterator[torch.Tensor]:
    """The latent video ``(1, C, S*W+1, h, w)`` of each request, in order (see the module docstring)."""
    jobs = [framepack_job(request, settings, training=training) for request in requests]
    prompts = _encode_prompts(models, jobs, settings.custom_system_prompt)
    images = _encode_images(models, jobs)
    dit = models["dit"]
    previous_head = dit.fp32_proj_out
    dit.fp32_proj_out = settings.fp32_output_head
    try:
        latents = [
            _generate(dit, job, prompts, images, generator, settings)
            for job, generator in zip(jobs, generators)
        ]
    finally:
        dit.fp32_proj_out = previous_head
    models.release("dit")  # a trained model being sampled stays: Components keeps what it was given
    yield from latents


def _encode_prompts(
    models: Components, jobs: Sequence[FramePackJob], system_prompt: str | None
) -> dict[str, Any]:
    """Every distinct prompt (and negative prompt) of the jobs, encoded once; the encoders are freed."""
    from tuner_framepack.components import encode_caption

    texts = {text for job in jobs for text in job.prompts.values()}
    texts |= {job.negative_prompt for job in jobs if job.negative_prompt is not None}
    missing = sorted(t for t in texts if ("prompt", t, system_prompt) not in models.memo)
    if missing:
        for text in missing:
            encoded = encode_caption(models, text, system_prompt)
            models.memo[("prompt", text, system_prompt)] = _to_cpu(encoded)
        log.info("encoded %d prompt(s)", len(missing))
    models.release(*TEXT_ENCODERS)
    return {text: models.memo[("prompt", text, system_prompt)] for text in texts}


def _to_cpu(encoded: Any) -> Any:
    return type(encoded)(**{name: tensor.cpu() for name, tensor in vars(encoded).items()})


def _encode_images(models: Components, jobs: Sequence[FramePackJob]) -> dict[tuple[Path, int, int], Any]:
    """Every distinct image at each job's size: its VAE latent and SigLIP embedding; both encoders freed."""
    from tuner_framepack.encoders import encode_image, vae_encode

    wanted = {
        (path, job.request.height, job.request.width)
        for job in jobs
        for path in [*job.images.values(), *([job.end_image] if job.end_image else [])]
    }
    encoded: dict[tuple[Path, int, int], Any] = {}
    for path, height, width in sorted(wanted):
        pixels = resize_to_cover(load_image(path), (width, height))
        vae = models["vae"]
        # Seeded from the file name, so an image always encodes to the same latent (the posterior is sampled).
        generator = torch.Generator(device=vae.device).manual_seed(zlib.crc32(str(path).encode()))
        latent = vae_encode(vae, _pixels(pixels), generator).float().cpu()
        embeddings = encode_image(pixels, models["image_encoder"]).float().cpu()
        encoded[(path, height, width)] = ImageConditioning(start_latent=latent, image_embeddings=embeddings)
    models.release("image_encoder")
    models.offload("vae")  # it decodes once the DiT is done: off the GPU meanwhile, read from disk once
    return encoded


def _pixels(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (1, 3, 1, H, W) in [-1, 1], the VAE's input."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None, :, None].float() / 127.5 - 1.0


def _generate(
    dit: torch.nn.Module,
    job: FramePackJob,
    prompts: Mapping[str, Any],
    images: Mapping[tuple[Path, int, int], ImageConditioning],
    generator: torch.Generator,
    settings: GenerationSettings,
) -> torch.Tensor:
    """One job's latent video: its sections through the DiT with the chosen solver."""
    request, window = job.request, settings.latent_window_size
    size = (request.height, request.width)
    conditioner = SectionConditioner(
        prompts={key: prompts[text] for key, text in job.prompts.items()},
        images={key: images[(path, *size)] for key, path in job.images.items()},
        negative=prompts[job.negative_prompt] if job.negative_prompt is not None else None,
    )
    plan = generation_plan(job.sections, window, f1=settings.f1, latent_paddings=settings.latent_paddings)
    height, width = request.height // 8, request.width // 8
    # The token count of one section's noisy latents after the 2x2 patches: the dynamic shift's input.
    sigmas = shifted_sigmas(request.steps, shift=job.flow_shift, seq_len=window * height * width // 4)
    end_latent = images[(job.end_image, *size)].start_latent if job.end_image and not settings.f1 else None
    device = next(dit.parameters()).device
    call = ModelCallSettings(
        dtype=_compute_dtype(dit),
        embedded_cfg_scale=job.embedded_cfg_scale,
        guidance_scale=request.cfg_scale,
        guidance_rescale=settings.guidance_rescale,
    )
    log.info(
        "generating %d section(s) of %d latents at %dx%d", job.sections, window, request.width, request.height
    )
    return generate_sections(
        plan,
        conditioner,
        predict_velocity=dit,
        solver=lambda denoise, noise, s: sample_flow(denoise, noise, s, solver=settings.sample_solver),
        sigmas=sigmas,
        generator=generator,
        settings=call,
        device=device,
        end_latent=end_latent,
    )


def _compute_dtype(dit: torch.nn.Module) -> torch.dtype:
    """The dtype the DiT computes in: its weights' (bf16 for the real model), bf16 for fp8-stored weights."""
    dtype = next(p.dtype for p in dit.parameters() if p.is_floating_point())
    return torch.bfloat16 if dtype.itemsize == 1 else dtype


@torch.no_grad()
def decode_latents(
    vae: torch.nn.Module,
    latents: torch.Tensor,
    sink: Callable[[torch.Tensor], None],
    settings: GenerationSettings,
) -> None:
    """Decode a latent video into ``sink`` as ``(3, F, H, W)`` pixel runs in [0, 1], in time order.

    By default section by section with the reference's soft-append overlap; ``--bulk_decode`` in one call.
    """
    from tuner_framepack.encoders import vae_decode

    latents = latents if latents.dim() == 5 else latents[None]

    def to_sink(pixels: torch.Tensor) -> None:
        sink(((pixels[0].float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0))

    if settings.bulk_decode:
        to_sink(vae_decode(vae, latents))
        return
    decode_streamed(
        latents, lambda chunk: vae_decode(vae, chunk), to_sink, latent_window_size=settings.latent_window_size
    )
