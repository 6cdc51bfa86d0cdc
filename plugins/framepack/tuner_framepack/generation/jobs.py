"""One FramePack generation job, resolved from a request and the command's options before any model loads.

A request comes from ``tuner generate``'s command line, a ``--from_file`` line or a training sample prompt;
the options say what the command fixes for all of them (window size, layout, solver). Resolving a job
parses every section string and counts the sections, so each mistake is found, and said in one line,
before a model is loaded.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from tuner_core import ConfigError, DataError, SampleRequest
from tuner_core.media import image_size
from tuner_framepack.generation.section_count import parse_latent_paddings, section_count
from tuner_framepack.generation.section_prompts import parse_section_strings
from tuner_framepack.options import FramePackGenerateOptions, FramePackTrainOptions
from tuner_framepack.sections import VAE_TIME_STRIDE

#: Pixels per latent cell times the DiT's patch size: generated sizes are multiples of it.
SIZE_MULTIPLE = 16
#: ``--embedded_cfg_scale`` of the reference (also its training samples' ``--g`` default).
DEFAULT_EMBEDDED_CFG_SCALE = 10.0
#: The solvers ``--sample_solver`` offers (the core's).
SOLVERS = ("unipc", "euler")


@attrs.frozen
class GenerationSettings:
    """What the command's options fix for every job (training samples use the reference's defaults)."""

    latent_window_size: int
    f1: bool
    bulk_decode: bool
    guidance_rescale: float = 0.0
    sample_solver: str = "unipc"
    latent_paddings: tuple[int, ...] | None = None
    custom_system_prompt: str | None = None
    #: The official demo runs the DiT's output head in float32 for inference.
    fp32_output_head: bool = True


def generation_settings(options: FramePackTrainOptions | FramePackGenerateOptions) -> GenerationSettings:
    """The settings of ``tuner generate`` or of samples during training."""
    if isinstance(options, FramePackGenerateOptions):
        paddings = options.latent_paddings
        return GenerationSettings(
            latent_window_size=options.latent_window_size,
            f1=options.f1,
            bulk_decode=options.bulk_decode,
            guidance_rescale=options.guidance_rescale,
            sample_solver=options.sample_solver,
            latent_paddings=tuple(parse_latent_paddings(paddings)) if paddings else None,
            custom_system_prompt=options.custom_system_prompt,
        )
    return GenerationSettings(options.latent_window_size, options.f1, options.bulk_decode)


@attrs.frozen
class FramePackJob:
    """One video to generate: its sections, the prompt and image of each section key, its guidance.

    :param prompts: section key -> prompt text (key 0 is every section's fallback).
    :param images: section key -> start image file.
    :param negative_prompt: encoded only when real CFG is on (``cfg_scale != 1``).
    """

    request: SampleRequest
    sections: int
    prompts: dict[int, str]
    images: dict[int, Path]
    end_image: Path | None
    negative_prompt: str | None
    embedded_cfg_scale: float
    flow_shift: float | None


def framepack_job(request: SampleRequest, settings: GenerationSettings, *, training: bool) -> FramePackJob:
    """Resolve ``request`` into a job; every problem is a one-line :class:`ConfigError`.

    :param training: a training sample prompt, whose length is ``--f`` frames (the reference's
        ``(frames - 1) // (4 W)`` sections, at least one) and whose switches are ``--i``, ``--g``, ...
    """
    image_option, size_option = ("--i", "--w/--h") if training else ("--image_path", "--video_size")
    _check_size(request, size_option)
    if request.flow_shift is not None and not request.flow_shift > 0:
        # The sigma schedule refuses it too, but only once the encoders have run.
        raise ConfigError(
            f"{'--fs' if training else '--flow_shift'} must be above 0, got {request.flow_shift}"
        )
    if request.image_path is None:
        raise ConfigError(
            f"{image_option} is required: FramePack generates a video from a start image "
            + ("(add --i path/to/image.png to the prompt line)" if training else "(--image_path start.png)")
        )
    window = settings.latent_window_size
    if training:
        sections = max((max(request.frames, 1) - 1) // (window * VAE_TIME_STRIDE), 1)
    else:
        sections = section_count(request.video_seconds, window, video_sections=request.video_sections)
    images = {
        k: Path(v) for k, v in parse_section_strings(str(request.image_path), option=image_option).items()
    }
    wanted = {(image_option, p) for p in images.values()}
    if request.end_image_path is not None:
        wanted.add(("--ei" if training else "--end_image_path", Path(request.end_image_path)))
    _check_images(sorted(wanted))
    return FramePackJob(
        request=request,
        sections=sections,
        prompts=parse_section_strings(request.prompt or " ", option="--prompt"),
        images=images,
        end_image=request.end_image_path,
        negative_prompt=request.negative_prompt if request.cfg_scale != 1.0 else None,
        embedded_cfg_scale=request.guidance if request.guidance is not None else DEFAULT_EMBEDDED_CFG_SCALE,
        flow_shift=request.flow_shift,
    )


def _check_images(images: list[tuple[str, Path]]) -> None:
    """Each ``(option, path)`` names an image Pillow can read (its header only: this runs per job, before
    any model loads, and a broken start image would otherwise stop the run after the text encoders)."""
    missing = [(option, path) for option, path in images if not path.is_file()]
    if missing:
        options = ", ".join(dict.fromkeys(option for option, _ in missing))
        raise ConfigError(f"{options}: no such image file: {', '.join(str(p) for _, p in missing)}")
    for option, path in images:
        try:
            image_size(path)
        except DataError as exc:
            raise ConfigError(f"{option} {exc}") from exc


def _check_size(request: SampleRequest, option: str) -> None:
    """A size the packed DiT can make: multiples of 16 pixels (latent cells of 8, patches of 2)."""
    bad = [(name, value) for name, value in (("height", request.height), ("width", request.width))]
    bad = [(name, value) for name, value in bad if value <= 0 or value % SIZE_MULTIPLE]
    if bad:
        hints = "; ".join(f"{name} {value}: use {_nearest(value)}" for name, value in bad)
        raise ConfigError(
            f"{option} {request.height} {request.width} does not fit FramePack, which needs multiples of "
            f"{SIZE_MULTIPLE} pixels ({hints})"
        )


def _nearest(value: int) -> str:
    below = max(value // SIZE_MULTIPLE * SIZE_MULTIPLE, SIZE_MULTIPLE)
    above = below + SIZE_MULTIPLE
    return f"{below} or {above}" if below != value else str(above)
