"""FramePack section arithmetic and the per-section training context cached for each clip.

A clip of ``F`` pixel frames becomes ``(F - 1) // 4 + 1`` latent frames (causal VAE, time stride 4).
Latent 0 is the start image; the rest is cut into sections of ``latent_window_size`` (W) latents. Each
section is trained as the model sees it at inference: its W target latents, the start latent, and up to
1 + 2 + 16 latents of neighbouring "history" packed at 1x, 2x and 4x compression, each with the RoPE time
indices of where those latents sit in the packed sequence.

Two layouts exist, matching the reference caching tool (musubi-tuner ``fpack_cache_latents.py``):

* the default *inverted anti-drifting* layout of the original FramePack, which generates sections from
  the last in time to the first, so each section's context is the (ground-truth) *future*;
* the ``--f1`` forward layout of FramePack-F1, whose context is the *past*.

One-frame (1f) training items are built by :func:`one_frame_section` from separately encoded control
latents. Everything here is pure tensor arithmetic on latents; no model is called.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import attrs
import torch

from tuner_core import ConfigError, DataError

logger = logging.getLogger(__name__)

#: Pixel frames per latent frame after the first (the causal VAE's time stride).
VAE_TIME_STRIDE = 4
#: Latents of history context at 1x (the "post" latent), 2x and 4x compression.
POST_LATENTS, LATENTS_2X, LATENTS_4X = 1, 2, 16
#: All history latents a section sees.
HISTORY_LATENTS = POST_LATENTS + LATENTS_2X + LATENTS_4X


class ClipTooShortError(DataError):
    """A clip has fewer frames than one section needs; the caller reports and skips it."""


@attrs.frozen
class SectionPlan:
    """How a clip of ``frame_count`` pixel frames is cut into sections of ``latent_window_size`` latents.

    :param frame_count: extracted pixel frames of the clip (4n+1 after the dataset's rounding).
    :param latent_window_size: latents per section (W).
    :param latent_frames: latent frames of the whole clip, ``(frame_count - 1) // 4 + 1``.
    :param sections: number of whole sections, ``(latent_frames - 1) // W`` (at least 1).
    :param aligned_latent_frames: latents actually used, ``sections * W + 1``.
    :param aligned_frame_count: pixel frames actually encoded; later frames are trimmed.
    """

    frame_count: int
    latent_window_size: int
    latent_frames: int
    sections: int
    aligned_latent_frames: int
    aligned_frame_count: int

    @property
    def trims_frames(self) -> bool:
        """Whether pixel frames beyond the last whole section are dropped before encoding."""
        return self.aligned_frame_count != self.frame_count


@attrs.frozen
class SectionIndices:
    """RoPE time indices of one section's packed sequence, each a 1-D int64 tensor.

    ``clean_latent_2x_indices`` / ``clean_latent_4x_indices`` are ``None`` where a one-frame item omits them.
    """

    latent_indices: torch.Tensor
    clean_latent_indices: torch.Tensor
    clean_latent_2x_indices: torch.Tensor | None
    clean_latent_4x_indices: torch.Tensor | None


@attrs.frozen(eq=False)
class SectionContext:
    """Everything the DiT needs for one training section, channel-first without batch dim.

    :param section_index: time index of the section (0 = first in time, right after the start latent).
    :param latents: target latents ``(C, W, h, w)`` (``(C, 1, h, w)`` for one-frame items).
    :param clean_latents: ``(C, 2, h, w)``: the start latent then the 1x history (post) latent; for
        one-frame items the control latents plus an optional zero post latent.
    :param clean_latents_2x: ``(C, 2, h, w)`` history at 2x, or ``None`` (one-frame items: the trainer
        makes zeros when the 2x indices exist).
    :param clean_latents_4x: ``(C, 16, h, w)`` history at 4x, or ``None`` (as above).
    :param indices: the RoPE time indices of the target and each kind of clean latent.
    """

    section_index: int
    latents: torch.Tensor
    clean_latents: torch.Tensor
    clean_latents_2x: torch.Tensor | None
    clean_latents_4x: torch.Tensor | None
    indices: SectionIndices


def latent_frame_count(frame_count: int) -> int:
    """Latent frames the causal VAE makes from ``frame_count`` pixel frames: ``(F - 1) // 4 + 1``."""
    if frame_count < 1:
        raise DataError(f"a clip needs at least one frame, got {frame_count}")
    return (frame_count - 1) // VAE_TIME_STRIDE + 1


def minimum_frame_count(latent_window_size: int) -> int:
    """Fewest pixel frames that make one section: the start frame plus W latents, ``W * 4 + 1``."""
    _check_window(latent_window_size)
    return latent_window_size * VAE_TIME_STRIDE + 1


def plan_sections(frame_count: int, latent_window_size: int) -> SectionPlan:
    """Cut a clip of ``frame_count`` pixel frames into sections of ``latent_window_size`` latents.

    :raises ClipTooShortError: the clip is shorter than one section (the message states the minimum).
    """
    _check_window(latent_window_size)
    latent_frames = latent_frame_count(frame_count)
    sections = (latent_frames - 1) // latent_window_size
    if sections < 1:
        raise ClipTooShortError(
            f"clip has {frame_count} frames ({latent_frames} latent frames), but one FramePack section at "
            f"latent window size {latent_window_size} needs at least {minimum_frame_count(latent_window_size)} "
            f"frames ({latent_window_size + 1} latent frames); use longer clips or a smaller "
            "fp_latent_window_size"
        )
    aligned_latent_frames = sections * latent_window_size + 1
    return SectionPlan(
        frame_count=frame_count,
        latent_window_size=latent_window_size,
        latent_frames=latent_frames,
        sections=sections,
        aligned_latent_frames=aligned_latent_frames,
        aligned_frame_count=(aligned_latent_frames - 1) * VAE_TIME_STRIDE + 1,
    )


def inverted_latent_paddings(sections: int) -> list[int]:
    """Blank-window counts per section of the inverted layout, in inference order (time-last first).

    ``[S-1, ..., 1, 0]``; beyond four sections the original FramePack caps the distance at
    ``[3, 2, ..., 2, 1, 0]`` so long videos keep a context the model was trained on.
    """
    if sections < 1:
        raise ValueError(f"sections must be at least 1, got {sections}")
    if sections > 4:
        return [3] + [2] * (sections - 3) + [1, 0]
    return list(range(sections - 1, -1, -1))


def inverted_indices(latent_padding: int, latent_window_size: int) -> SectionIndices:
    """Indices of the inverted layout: ``[start | padding*W blank | W target | post | 2x(2) | 4x(16)]``.

    The start latent sits at 0, then ``latent_padding`` empty windows, so the section's target begins at
    ``1 + latent_padding * W``, and the future context follows it.
    """
    _check_window(latent_window_size)
    if latent_padding < 0:
        raise ValueError(f"latent_padding must be >= 0, got {latent_padding}")
    target_start = 1 + latent_padding * latent_window_size
    post = target_start + latent_window_size
    return SectionIndices(
        latent_indices=_span(target_start, latent_window_size),
        clean_latent_indices=torch.tensor([0, post], dtype=torch.int64),
        clean_latent_2x_indices=_span(post + POST_LATENTS, LATENTS_2X),
        clean_latent_4x_indices=_span(post + POST_LATENTS + LATENTS_2X, LATENTS_4X),
    )


def f1_indices(latent_window_size: int) -> SectionIndices:
    """Indices of the forward (F1) layout: ``[start | 4x(16) | 2x(2) | 1x | W target]``.

    The same for every section: the target always follows its 19 history latents.
    """
    _check_window(latent_window_size)
    one_x = 1 + LATENTS_4X + LATENTS_2X
    return SectionIndices(
        latent_indices=_span(one_x + 1, latent_window_size),
        clean_latent_indices=torch.tensor([0, one_x], dtype=torch.int64),
        clean_latent_2x_indices=_span(1 + LATENTS_4X, LATENTS_2X),
        clean_latent_4x_indices=_span(1, LATENTS_4X),
    )


def inverted_sections(latents: torch.Tensor, latent_window_size: int) -> list[SectionContext]:
    """Training context of every section of a clip in the default inverted anti-drifting layout.

    Emulates original FramePack inference: sections are visited from the time-last one to section 0,
    and after each one its (ground-truth) latents are prepended to the history, so an earlier section
    sees the true *future* latents as post/2x/4x context, zeros where the clip has no more future.
    Section 0 prepends the start latent with its window, as inference does.

    :param latents: the clip's VAE latents ``(C, F, h, w)``; latents beyond the last whole section are
        ignored.
    :returns: one context per section, ordered by time (section 0 first).
    """
    sections = _sections_of(latents, latent_window_size)
    channels, _, height, width = latents.shape
    start_latent = latents[:, :1]
    history = latents.new_zeros((channels, HISTORY_LATENTS, height, width))
    contexts = []
    for latent_padding, section_index in zip(
        inverted_latent_paddings(sections), range(sections - 1, -1, -1), strict=True
    ):
        target_start = 1 + section_index * latent_window_size
        target = latents[:, target_start : target_start + latent_window_size]
        post, history_2x, history_4x = history.split([POST_LATENTS, LATENTS_2X, LATENTS_4X], dim=1)
        contexts.append(
            SectionContext(
                section_index=section_index,
                latents=target.clone(),
                clean_latents=torch.cat([start_latent, post], dim=1),
                clean_latents_2x=history_2x.clone(),
                clean_latents_4x=history_4x.clone(),
                indices=inverted_indices(latent_padding, latent_window_size),
            )
        )
        newest = latents[:, : latent_window_size + 1] if section_index == 0 else target
        # Only the first 19 history latents are ever read, so older ones are dropped.
        history = torch.cat([newest, history], dim=1)[:, :HISTORY_LATENTS]
    contexts.reverse()
    return contexts


def f1_sections(latents: torch.Tensor, latent_window_size: int) -> list[SectionContext]:
    """Training context of every section of a clip in the forward (``--f1``, FramePack-F1) layout.

    Each section's history is the 19 latents right before its target, right-aligned into zeros when the
    clip starts closer than that (the start latent included); the oldest 16 go to 4x, the next 2 to 2x
    and the most recent one next to the start latent.

    :param latents: the clip's VAE latents ``(C, F, h, w)``.
    :returns: one context per section, ordered by time (section 0 first).
    """
    sections = _sections_of(latents, latent_window_size)
    channels, _, height, width = latents.shape
    start_latent = latents[:, :1]
    contexts = []
    for section_index in range(sections):
        target_start = 1 + section_index * latent_window_size
        history = latents.new_zeros((channels, HISTORY_LATENTS, height, width))
        available = latents[:, max(0, target_start - HISTORY_LATENTS) : target_start]
        history[:, HISTORY_LATENTS - available.shape[1] :] = available
        history_4x, history_2x, history_1x = history.split([LATENTS_4X, LATENTS_2X, POST_LATENTS], dim=1)
        contexts.append(
            SectionContext(
                section_index=section_index,
                latents=latents[:, target_start : target_start + latent_window_size].clone(),
                clean_latents=torch.cat([start_latent, history_1x], dim=1),
                clean_latents_2x=history_2x.clone(),
                clean_latents_4x=history_4x.clone(),
                indices=f1_indices(latent_window_size),
            )
        )
    return contexts


def clip_sections(
    latents: torch.Tensor, latent_window_size: int, *, f1: bool = False
) -> list[SectionContext]:
    """Every section of a clip in the inverted layout, or the forward layout when ``f1`` (time order)."""
    if f1:
        return f1_sections(latents, latent_window_size)
    return inverted_sections(latents, latent_window_size)


def one_frame_section(
    control_latents: torch.Tensor,
    target_latent: torch.Tensor,
    latent_window_size: int,
    *,
    clean_indices: Sequence[int] | None = None,
    target_index: int | None = None,
    no_post: bool = False,
    no_2x: bool = False,
    no_4x: bool = False,
) -> SectionContext:
    """Context of a one-frame (1f) item: one target latent conditioned on separately encoded controls.

    :param control_latents: ``(C, N, h, w)``, one latent per control image (alpha masks already applied).
    :param target_latent: ``(C, 1, h, w)``.
    :param clean_indices: ``fp_1f_clean_indices``, the time index of each control latent (default ``[0]``).
    :param target_index: ``fp_1f_target_index``, the time index of the target (default W).
    :param no_post: ``fp_1f_no_post``: do not append a zero post latent at index ``1 + W``.
    :param no_2x: ``--one_frame_no_2x``: no 2x indices (fixed at ``W+2, W+3`` otherwise).
    :param no_4x: ``--one_frame_no_4x``: no 4x indices (fixed at ``W+4 ... W+19`` otherwise).
    :returns: a context whose 2x/4x latents are ``None``; the trainer supplies zeros for them.
    """
    _check_window(latent_window_size)
    _check_latents(control_latents, "control latents")
    _check_latents(target_latent, "target latent")
    if target_latent.shape[1] != 1:
        raise DataError(f"a one-frame target must be one latent frame, got {target_latent.shape[1]}")
    if (
        control_latents.shape[0] != target_latent.shape[0]
        or control_latents.shape[2:] != target_latent.shape[2:]
    ):
        raise DataError(
            f"control latents {tuple(control_latents.shape)} and target latent {tuple(target_latent.shape)} "
            "differ in channels or size; control images must be resized to the target's bucket"
        )
    if clean_indices is None or len(clean_indices) == 0:
        if clean_indices is not None:
            logger.warning("fp_1f_clean_indices is empty; using [0] as one-frame training does by default")
        clean_indices = [0]
    if len(clean_indices) != control_latents.shape[1]:
        raise ConfigError(
            f"fp_1f_clean_indices {list(clean_indices)} names {len(clean_indices)} control latents but the item "
            f"has {control_latents.shape[1]} control images; give one index per control image"
        )
    if target_index is None:
        target_index = latent_window_size

    post_index = 1 + latent_window_size
    clean_latents = control_latents
    index_list = [int(i) for i in clean_indices]
    if not no_post:
        # The zero post latent stands in for the unknown next section, as in inference.
        clean_latents = torch.cat([control_latents, torch.zeros_like(control_latents[:, :1])], dim=1)
        index_list.append(post_index)
    indices = SectionIndices(
        latent_indices=torch.tensor([target_index], dtype=torch.int64),
        clean_latent_indices=torch.tensor(index_list, dtype=torch.int64),
        clean_latent_2x_indices=None if no_2x else _span(post_index + POST_LATENTS, LATENTS_2X),
        clean_latent_4x_indices=None if no_4x else _span(post_index + POST_LATENTS + LATENTS_2X, LATENTS_4X),
    )
    return SectionContext(
        section_index=0,
        latents=target_latent.clone(),
        clean_latents=clean_latents.clone(),
        clean_latents_2x=None,
        clean_latents_4x=None,
        indices=indices,
    )


def _span(start: int, length: int) -> torch.Tensor:
    """``length`` consecutive int64 indices from ``start``."""
    return torch.arange(start, start + length, dtype=torch.int64)


def _check_window(latent_window_size: int) -> None:
    """Reject a window size that cannot make a section."""
    if (
        isinstance(latent_window_size, bool)
        or not isinstance(latent_window_size, int)
        or latent_window_size < 1
    ):
        raise ConfigError(f"fp_latent_window_size must be a positive integer, got {latent_window_size!r}")


def _check_latents(latents: torch.Tensor, what: str) -> None:
    """Require channel-first latents without batch dim, ``(C, F, h, w)``."""
    if latents.dim() != 4:
        raise DataError(f"{what} must be (channels, frames, height, width), got shape {tuple(latents.shape)}")


def _sections_of(latents: torch.Tensor, latent_window_size: int) -> int:
    """Whole sections in a clip's latents; a clip shorter than one section is an error."""
    _check_window(latent_window_size)
    _check_latents(latents, "clip latents")
    latent_frames = latents.shape[1]
    sections = (latent_frames - 1) // latent_window_size
    if sections < 1:
        raise ClipTooShortError(
            f"clip has {latent_frames} latent frames, but one FramePack section at latent window size "
            f"{latent_window_size} needs {latent_window_size + 1} latent frames "
            f"({minimum_frame_count(latent_window_size)} video frames)"
        )
    if latent_frames != sections * latent_window_size + 1:
        logger.debug(
            "using the first %d of %d latent frames (whole sections only)",
            sections * latent_window_size + 1,
            latent_frames,
        )
    return sections
