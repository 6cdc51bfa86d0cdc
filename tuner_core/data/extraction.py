"""Frame extraction: which frames of a video become training clips, and frame-rate resampling.

Positions are indices into the video *after* resampling to the architecture's frame rate (when the
dataset gives ``source_fps``); :func:`source_frames` maps them back to frame numbers in the file.
The five ``frame_extraction`` modes follow the dataset guide:

- ``head``: for each target length ``t`` the video can hold, frames ``[0, t)``;
- ``chunk``: consecutive, non-overlapping runs of ``t`` frames;
- ``slide``: runs of ``t`` frames starting at ``0, frame_stride, 2*frame_stride, ...`` while they fit;
- ``uniform``: ``frame_sample`` runs of ``t`` frames whose starts are spread evenly over the video
  (``frame_sample = 1`` is ``head``);
- ``full``: one run of ``min(length, max_frames)`` frames rounded down to ``frame_multiple*n + 1``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from tuner_core.config.dataset import FRAME_EXTRACTION

Clip = tuple[int, ...]


def round_frames(count: int, frame_multiple: int) -> int:
    """Round a frame count down to ``frame_multiple * n + 1`` (for example 4n+1 for a stride-4 causal VAE).

    Counts below 1 give 0 (no clip).
    """
    if count < 1:
        return 0
    return (count - 1) // frame_multiple * frame_multiple + 1


def normalise_target_frames(target_frames: Sequence[int], frame_multiple: int) -> tuple[int, ...]:
    """Round every ``target_frames`` value with :func:`round_frames`, drop duplicates and sort."""
    return tuple(sorted({round_frames(t, frame_multiple) for t in target_frames if t >= 1}))


def extract_clips(
    frame_count: int,
    mode: str,
    target_frames: Sequence[int],
    *,
    frame_stride: int = 1,
    frame_sample: int = 1,
    max_frames: int = 129,
    frame_multiple: int = 1,
) -> list[Clip]:
    """Positions of every clip a video of ``frame_count`` frames gives.

    :param frame_count: length of the (resampled) video.
    :param mode: one of ``head``, ``chunk``, ``slide``, ``uniform``, ``full``.
    :param target_frames: clip lengths; rounded with :func:`normalise_target_frames` (unused by ``full``).
    :param frame_multiple: the architecture's frame multiple (clip lengths are ``multiple*n + 1``).
    :returns: one tuple of consecutive positions per clip, ordered by length, then start; no duplicates.
    :raises ValueError: for an unknown mode or a non-positive stride, sample count or maximum.
    """
    if mode not in FRAME_EXTRACTION:
        raise ValueError(f"frame_extraction must be one of {', '.join(FRAME_EXTRACTION)}, got {mode!r}")
    if frame_stride < 1 or frame_sample < 1 or max_frames < 1 or frame_multiple < 1:
        raise ValueError("frame_stride, frame_sample, max_frames and frame_multiple must be positive")
    if mode == "uniform" and frame_sample == 1:
        mode = "head"  # the guide's rule: one uniform sample is the head of the video

    starts: list[tuple[int, int]] = []  # (start, length)
    if mode == "full":
        length = round_frames(min(frame_count, max_frames), frame_multiple)
        if length >= 1:
            starts.append((0, length))
    else:
        for t in normalise_target_frames(target_frames, frame_multiple):
            if t > frame_count:
                continue
            if mode == "head":
                starts.append((0, t))
            elif mode == "chunk":
                starts.extend((s, t) for s in range(0, frame_count - t + 1, t))
            elif mode == "slide":
                starts.extend((s, t) for s in range(0, frame_count - t + 1, frame_stride))
            else:  # uniform: numpy's integer linspace, as the reference tools compute it
                spread = np.linspace(0, frame_count - t, frame_sample, dtype=int)
                starts.extend((int(s), t) for s in spread)

    clips: list[Clip] = []
    seen: set[tuple[int, int]] = set()
    for start, length in starts:
        # uniform on a short video repeats starts; a repeated clip would only overwrite its own cache
        if (start, length) in seen:
            continue
        seen.add((start, length))
        clips.append(tuple(range(start, start + length)))
    return clips


def _kept_frames(source_fps: float, target_fps: float) -> Iterator[int]:
    """Source frame numbers kept when resampling, in order (an endless stream).

    A running position advances by ``target_fps / source_fps`` per source frame; a frame is kept when
    the integer part of the position changes. The position is accumulated by repeated addition (not
    multiplication) so that the kept frames are exactly those of the reference tools.
    """
    delta = target_fps / source_fps
    position = 0.0
    previous = -1
    index = 0
    while True:
        current = int(position)
        position += delta
        if current != previous:
            previous = current
            yield index
        index += 1


def fps_resample_map(frame_count: int, source_fps: float | None, target_fps: float) -> list[int]:
    """For each position of the resampled video, the frame number in a source of ``frame_count`` frames.

    Without ``source_fps`` (or when it is not above ``target_fps``) every frame is kept: frames are dropped
    to lower the rate, never repeated to raise it.
    """
    if source_fps is None or source_fps <= 0:
        return list(range(frame_count))
    kept = []
    for index in _kept_frames(source_fps, target_fps):
        if index >= frame_count:
            break
        kept.append(index)
    return kept


def source_frames(positions: Sequence[int], source_fps: float | None, target_fps: float) -> list[int]:
    """Frame numbers in the source file of the given resampled positions (see :func:`fps_resample_map`)."""
    if source_fps is None or source_fps <= 0 or not positions:
        return list(positions)
    last = max(positions)
    kept: list[int] = []
    for index in _kept_frames(source_fps, target_fps):
        kept.append(index)
        if len(kept) > last:
            break
    return [kept[p] for p in positions]


__all__ = [
    "Clip",
    "extract_clips",
    "fps_resample_map",
    "normalise_target_frames",
    "round_frames",
    "source_frames",
]
