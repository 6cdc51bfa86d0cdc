"""How many sections a generated video has, how long it is, and which blank-window padding each one uses.

The reference (musubi-tuner ``fpack_generate_video.py``, after the official FramePack demo) turns
``--video_seconds`` into sections with a hard-coded 30 frames per second, whatever ``--fps`` is, and
Python's round-half-to-even. Each section generates ``latent_window_size`` (W) latents, so a video of S
sections has ``S * W + 1`` latents (the start latent first) and ``4 * S * W + 1`` pixel frames.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tuner_core import ConfigError
from tuner_framepack.sections import VAE_TIME_STRIDE, inverted_latent_paddings

logger = logging.getLogger(__name__)

#: Frames per second the reference divides by when counting sections (not ``--fps``).
SECTION_COUNT_FPS = 30


def section_count(
    video_seconds: float | None, latent_window_size: int, *, video_sections: int | None = None
) -> int:
    """Sections of the video: ``--video_sections`` when given, else ``max(round(s * 30 / (W * 4)), 1)``.

    ``round`` is Python's (half to even) and the expression is evaluated in the reference's order, so the
    count matches it for every float. 5 s at W=9 gives round(4.17) = 4; 60 s gives 50.

    :raises ConfigError: a non-positive length or section count.
    """
    if latent_window_size < 1:
        raise ConfigError(f"--latent_window_size must be at least 1, got {latent_window_size}")
    if video_sections is not None:
        if isinstance(video_sections, bool) or not isinstance(video_sections, int) or video_sections < 1:
            raise ConfigError(f"--video_sections must be a positive integer, got {video_sections!r}")
        # The reference converts the count to seconds with --fps and back with 30, which only gives the
        # requested count back at 30 fps; the count asked for is what is meant.
        return video_sections
    if video_seconds is None or not video_seconds > 0:
        raise ConfigError(f"--video_seconds must be a positive number of seconds, got {video_seconds!r}")
    sections = (video_seconds * SECTION_COUNT_FPS) / (latent_window_size * VAE_TIME_STRIDE)
    return int(max(round(sections), 1))


def video_latent_count(sections: int, latent_window_size: int) -> int:
    """Latent frames of a generated video: the start latent plus W per section, ``S * W + 1``."""
    return sections * latent_window_size + 1


def video_frame_count(sections: int, latent_window_size: int) -> int:
    """Pixel frames of a generated video, ``4 * S * W + 1`` (36S + 1 at W=9: 5 s gives 145 frames)."""
    return (video_latent_count(sections, latent_window_size) - 1) * VAE_TIME_STRIDE + 1


def section_seconds(sections: int, latent_window_size: int, fps: float) -> float:
    """Length in seconds of the video at ``fps``, as the reference reports for ``--video_sections``."""
    return video_frame_count(sections, latent_window_size) / fps


def parse_latent_paddings(text: str, *, option: str = "--latent_paddings") -> list[int]:
    """``"3,2,1,0"`` -> ``[3, 2, 1, 0]``: one non-negative blank-window count per section.

    :raises ConfigError: an empty item or a value that is not a non-negative integer.
    """
    values = []
    for item in text.split(","):
        try:
            value = int(item)
        except ValueError:
            raise ConfigError(
                f"{option} {text!r}: {item.strip()!r} is not an integer; give comma-separated counts such as 3,2,1,0"
            ) from None
        if value < 0:
            raise ConfigError(f"{option} {text!r}: paddings cannot be negative ({value}); use 0 or more")
        values.append(value)
    return values


def section_latent_paddings(sections: int, override: Sequence[int] | None = None) -> list[int]:
    """Padding of each section of the inverted layout, in generation order (time-last section first).

    The default is :func:`tuner_framepack.sections.inverted_latent_paddings` (``[S-1, ..., 0]``, or
    ``[3, 2, ..., 2, 1, 0]`` beyond four sections), shared with caching. An ``override`` shorter than S
    replaces only the first sections (the rest keep their default); a longer one is cut to S. Both are
    logged, as the reference prints them. (The reference itself crashes on a short override for S <= 4,
    where its default is an iterator; the documented intent is what is done here.)
    """
    paddings = inverted_latent_paddings(sections)
    if override is None:
        return paddings
    override = [int(p) for p in override]
    if any(p < 0 for p in override):
        raise ConfigError(f"--latent_paddings cannot be negative, got {override}")
    if len(override) < sections:
        logger.warning(
            "--latent_paddings gives %d paddings for %d sections; the remaining sections use the default %s",
            len(override),
            sections,
            paddings[len(override) :],
        )
        return override + paddings[len(override) :]
    if len(override) > sections:
        logger.warning(
            "--latent_paddings gives %d paddings for %d sections; only the first %d are used",
            len(override),
            sections,
            sections,
        )
    return override[:sections]
