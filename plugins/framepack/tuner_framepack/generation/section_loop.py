"""The section loop: generate every section of a video with a given DiT call and solver.

Each section draws its starting noise ``(B, C, W, h, w)`` float32 from one CPU ``torch.Generator`` that
the caller seeds once; the generator is consumed across sections in generation order, as the reference
does, so one seed gives one video. The solver and its sigmas are parameters (the core's UniPC and
shifted schedule plug in there); the DiT is any callable with its keyword interface.

Only the 19 history latents are kept between sections. Every finished section's new latents go, in
generation order, to ``on_section`` (for streamed decoding or previews), and the loop returns the whole
latent video in time order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import torch

from tuner_framepack.generation.conditioning import SectionConditioner
from tuner_framepack.generation.model_call import (
    ModelCallSettings,
    SectionSolver,
    VelocityModel,
    make_denoise,
)
from tuner_framepack.generation.section_plan import GenerationPlan, SectionStep, new_history

logger = logging.getLogger(__name__)


@attrs.frozen(eq=False)
class SectionResult:
    """The latents one section adds to the video.

    :param step: the section.
    :param latents: ``(B, C, n, h, w)`` float32 on the CPU, in time order: the W generated latents, with
        the start latent in front for the section that adds time 0.
    :param time_start: time index of ``latents[:, :, 0]`` in the finished video.
    """

    step: SectionStep
    latents: torch.Tensor
    time_start: int


def section_noise(generator: torch.Generator, like: torch.Tensor, latent_window_size: int) -> torch.Tensor:
    """One section's starting noise: ``randn(B, C, W, h, w)`` float32 drawn on the generator's device.

    The reference asks for ``(frames + 3) // 4`` latent frames with ``frames = 4W - 3``, which is W.
    """
    batch, channels, _, height, width = like.shape
    shape = (batch, channels, latent_window_size, height, width)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)


def generate_sections(
    plan: GenerationPlan,
    conditioner: SectionConditioner,
    *,
    predict_velocity: VelocityModel,
    solver: SectionSolver,
    sigmas: torch.Tensor,
    generator: torch.Generator,
    settings: ModelCallSettings,
    device: torch.device | str = "cpu",
    end_latent: torch.Tensor | None = None,
    on_section: Callable[[SectionResult], None] | None = None,
) -> torch.Tensor:
    """Generate all sections of ``plan`` and return the latent video ``(B, C, S*W+1, h, w)`` (CPU, float32).

    :param conditioner: each section's prompt and image (section-specific prompts/images).
    :param predict_velocity: the DiT call (see :data:`~.model_call.VelocityModel`).
    :param solver: ``solver(denoise, noise, sigmas) -> latents``.
    :param sigmas: the schedule, from 1 down to 0 (the same for every section: all have W latents).
    :param generator: seeded once by the caller; each section draws its noise from it in turn.
    :param end_latent: the ``--end_image_path`` latent ``(B, C, 1, h, w)`` (inverted layout only).
    :param on_section: called with each section's :class:`SectionResult` as soon as it is finished.
    """
    conditioner.warn_unused(plan.sections)
    history = new_history(plan, conditioner.start_latent, end_latent)
    sigmas = sigmas.to(device)
    results = []
    for step in plan.steps:
        conditioning = conditioner.for_section(step.section_index, plan.sections)
        start_latent = conditioning.image.start_latent
        context = history.context(step, start_latent)
        noise = section_noise(generator, start_latent, plan.latent_window_size)
        denoise = make_denoise(predict_velocity, conditioning, context, settings, device=device)
        logger.debug(
            "section %d (generation step %d of %d)", step.section_index, step.loop_index + 1, plan.sections
        )
        with torch.no_grad():
            generated = solver(denoise, noise.to(device), sigmas)
        _check_generated(generated, noise)
        new = history.add(step, generated.detach().to("cpu", torch.float32), start_latent)
        result = SectionResult(step=step, latents=new, time_start=step.time_start)
        if on_section is not None:
            on_section(result)
        results.append(result)
    return torch.cat([r.latents for r in sorted(results, key=lambda r: r.time_start)], dim=2)


def _check_generated(generated: torch.Tensor, noise: torch.Tensor) -> None:
    """Fail clearly when a solver returns latents of another shape than its noise."""
    if tuple(generated.shape) != tuple(noise.shape):
        raise ValueError(
            f"the solver returned latents of shape {tuple(generated.shape)} for noise of shape {tuple(noise.shape)}"
        )
