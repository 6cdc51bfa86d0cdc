"""The order sections are generated in, their RoPE indices, and the history each one is conditioned on.

Two layouts, as in the reference (musubi-tuner ``fpack_generate_video.py`` after the official demos):

* default *inverted anti-drifting*: sections run from the last in time to section 0. A 19-latent
  history (post 1 + 2x 2 + 16x 4) starts as zeros, or with the ``--end_image_path`` latent as the first
  generated section's post latent; each section's latents are prepended to it, and section 0 (generated
  last) prepends the start latent too, so the history always holds the *future* of the next section.
* ``--f1`` forward: sections run in time order. The history starts as 19 zeros plus the start latent;
  each section's latents are appended and the last 19 latents are its context (16 at 4x, 2 at 2x, 1 at 1x).

The indices come from :mod:`tuner_framepack.sections`, the code caching builds training items with, so
generation and training see one layout. Only the 19 latents ever read are kept, so the history is small.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import attrs
import torch

from tuner_framepack.generation.section_count import section_latent_paddings, video_latent_count
from tuner_framepack.sections import (
    HISTORY_LATENTS,
    LATENTS_2X,
    LATENTS_4X,
    POST_LATENTS,
    SectionIndices,
    f1_indices,
    inverted_indices,
)

logger = logging.getLogger(__name__)


@attrs.frozen
class SectionStep:
    """One section of the generation loop.

    :param loop_index: position in generation order (0 = generated first).
    :param section_index: time index (0 = right after the start latent).
    :param is_first: generated first (the time-last section in the inverted layout).
    :param is_last: generated last (section 0 in the inverted layout, the time-last section in F1).
    :param latent_padding: blank windows between the start latent and the target (0 in F1).
    :param indices: the RoPE time indices of the target and each clean-latent group.
    :param time_start: time index of the first latent this section adds to the video.
    :param adds_start_latent: the section also adds the start latent (time 0) to the video.
    """

    loop_index: int
    section_index: int
    is_first: bool
    is_last: bool
    latent_padding: int
    indices: SectionIndices = attrs.field(eq=False)
    time_start: int
    adds_start_latent: bool


@attrs.frozen
class GenerationPlan:
    """All sections of one video in generation order.

    :param latent_window_size: latents each section generates (W).
    :param f1: the forward (FramePack-F1) layout instead of the inverted one.
    """

    steps: tuple[SectionStep, ...]
    latent_window_size: int
    f1: bool

    @property
    def sections(self) -> int:
        """Number of sections (S)."""
        return len(self.steps)

    @property
    def latent_frames(self) -> int:
        """Latent frames of the finished video, ``S * W + 1``."""
        return video_latent_count(self.sections, self.latent_window_size)


def generation_plan(
    sections: int,
    latent_window_size: int,
    *,
    f1: bool = False,
    latent_paddings: Sequence[int] | None = None,
) -> GenerationPlan:
    """The sections of an S-section video in the order the reference generates them.

    :param latent_paddings: ``--latent_paddings`` (inverted layout only; see
        :func:`~.section_count.section_latent_paddings` for counts that differ from S).
    """
    if sections < 1:
        raise ValueError(f"a video needs at least one section, got {sections}")
    if f1:
        if latent_paddings is not None:
            logger.warning("--latent_paddings is ignored with --f1 (the forward layout has no padding)")
        steps = [_f1_step(k, sections, latent_window_size) for k in range(sections)]
    else:
        paddings = section_latent_paddings(sections, latent_paddings)
        steps = [_inverted_step(k, sections, latent_window_size, paddings[k]) for k in range(sections)]
    return GenerationPlan(steps=tuple(steps), latent_window_size=latent_window_size, f1=f1)


def _inverted_step(loop_index: int, sections: int, window: int, padding: int) -> SectionStep:
    """Step ``loop_index`` of the inverted layout: time index ``S - 1 - loop_index``."""
    section_index = sections - 1 - loop_index
    last = section_index == 0
    return SectionStep(
        loop_index=loop_index,
        section_index=section_index,
        is_first=loop_index == 0,
        is_last=last,
        latent_padding=padding,
        indices=inverted_indices(padding, window),
        time_start=0 if last else 1 + section_index * window,
        adds_start_latent=last,
    )


def _f1_step(loop_index: int, sections: int, window: int) -> SectionStep:
    """Step ``loop_index`` of the forward layout, which is also its time index."""
    return SectionStep(
        loop_index=loop_index,
        section_index=loop_index,
        is_first=loop_index == 0,
        is_last=loop_index == sections - 1,
        latent_padding=0,
        indices=f1_indices(window),
        time_start=0 if loop_index == 0 else 1 + loop_index * window,
        adds_start_latent=loop_index == 0,
    )


@attrs.frozen(eq=False)
class CleanContext:
    """A section's clean latents ``(B, C, N, h, w)`` (float32, history device) and their indices.

    ``clean_latents`` is ``[start latent, 1x history latent]``.
    """

    clean_latents: torch.Tensor
    clean_latents_2x: torch.Tensor
    clean_latents_4x: torch.Tensor
    indices: SectionIndices


class InvertedHistory:
    """History of the inverted layout: the 19 latents right after the section being generated."""

    def __init__(self, like: torch.Tensor, end_latent: torch.Tensor | None = None) -> None:
        """:param like: a ``(B, C, 1, h, w)`` latent giving the shape; :param end_latent: ``--end_image_path``."""
        batch, channels, _, height, width = like.shape
        self._history = torch.zeros((batch, channels, HISTORY_LATENTS, height, width), dtype=torch.float32)
        if end_latent is not None:
            # The end image stands in for the (not generated) future of the first generated section.
            self._history[:, :, :1] = end_latent.to(self._history)

    def context(self, step: SectionStep, start_latent: torch.Tensor) -> CleanContext:
        """Clean latents of ``step``: the start latent, then post / 2x / 4x from the front of the history."""
        post, history_2x, history_4x = self._history.split([POST_LATENTS, LATENTS_2X, LATENTS_4X], dim=2)
        clean = torch.cat([start_latent.to(self._history), post], dim=2)
        return CleanContext(clean, history_2x, history_4x, step.indices)

    def add(self, step: SectionStep, generated: torch.Tensor, start_latent: torch.Tensor) -> torch.Tensor:
        """Prepend a section's latents (and, on section 0, the start latent); returns what joins the video."""
        new = generated.to(self._history)
        if step.adds_start_latent:
            new = torch.cat([start_latent.to(new), new], dim=2)
        self._history = torch.cat([new, self._history], dim=2)[:, :, :HISTORY_LATENTS]
        return new


class ForwardHistory:
    """History of the F1 layout: the 19 latents right before the section being generated."""

    def __init__(self, start_latent: torch.Tensor) -> None:
        """:param start_latent: ``(B, C, 1, h, w)``, frame 0 of the video; it ends the zero history."""
        self._start = start_latent.to(torch.float32)
        batch, channels, _, height, width = start_latent.shape
        zeros = torch.zeros((batch, channels, HISTORY_LATENTS, height, width), dtype=torch.float32)
        self._history = torch.cat([zeros, self._start], dim=2)[:, :, -HISTORY_LATENTS:]

    def context(self, step: SectionStep, start_latent: torch.Tensor) -> CleanContext:
        """Clean latents of ``step``: the section's start latent, then the newest history latent at 1x."""
        history_4x, history_2x, one_x = self._history.split([LATENTS_4X, LATENTS_2X, POST_LATENTS], dim=2)
        clean = torch.cat([start_latent.to(self._history), one_x], dim=2)
        return CleanContext(clean, history_2x, history_4x, step.indices)

    def add(self, step: SectionStep, generated: torch.Tensor, start_latent: torch.Tensor) -> torch.Tensor:
        """Append a section's latents; returns what joins the video (with frame 0 for the first section).

        ``start_latent`` (the section's own image) is not used: F1's frame 0 is the one the history began
        with, as in the reference.
        """
        new = generated.to(self._history)
        self._history = torch.cat([self._history, new], dim=2)[:, :, -HISTORY_LATENTS:]
        return torch.cat([self._start, new], dim=2) if step.adds_start_latent else new


History = InvertedHistory | ForwardHistory


def new_history(
    plan: GenerationPlan, start_latent: torch.Tensor, end_latent: torch.Tensor | None = None
) -> History:
    """The empty history of ``plan``'s layout; F1 ignores ``end_latent`` (with a warning), as the reference."""
    if plan.f1:
        if end_latent is not None:
            logger.warning("--end_image_path is ignored with --f1 (the forward layout has no future context)")
        return ForwardHistory(start_latent)
    return InvertedHistory(start_latent, end_latent)
