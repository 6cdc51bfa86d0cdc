"""Decoding an item: its frames (or image) and controls, resized to cover the bucket and centre-cropped."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tuner_core.architecture import MediaRules
from tuner_core.data.extraction import fps_resample_map, source_frames
from tuner_core.data.items import MediaItem, MediaSample
from tuner_core.errors import DataError
from tuner_core.media.image import load_image
from tuner_core.media.resize import resize_to_cover
from tuner_core.media.video import count_frames, read_frames


def _control_video(path: Path, bucket: tuple[int, int], item: MediaItem, rules: MediaRules) -> np.ndarray:
    """The control video's frames at the item's positions; a shorter control repeats its last frame."""
    assert item.frame_indices is not None
    length = len(fps_resample_map(count_frames(path), item.source_fps, rules.fps))
    if length == 0:
        raise DataError(f"{path}: the control video has no frames")
    positions = [min(p, length - 1) for p in item.frame_indices]
    frames = source_frames(positions, item.source_fps, rules.fps)
    return read_frames(path, frames, lambda pixels: resize_to_cover(pixels, bucket))


def load_sample(item: MediaItem, rules: MediaRules) -> MediaSample:
    """Decode ``item`` and resize it (and its controls) to its bucket.

    Video frames are decoded one by one and resized as they come, so only the clip's frames at bucket
    size are held. Frame positions are mapped back to file frame numbers with the item's ``source_fps``
    and the architecture's frame rate.

    :param rules: the architecture's media rules (its frame rate is needed for resampled datasets).
    :raises DataError: if the media (or a control) can no longer be read or decoded; callers report the
        item and go on with the others.
    """
    buckets = item.control_buckets or (item.bucket,) * len(item.control_sources)
    if item.is_video:
        assert item.frame_indices is not None
        frames = source_frames(item.frame_indices, item.source_fps, rules.fps)
        pixels = read_frames(item.source, frames, lambda p: resize_to_cover(p, item.bucket))
        controls = tuple(
            _control_video(path, bucket, item, rules) for path, bucket in zip(item.control_sources, buckets)
        )
    else:
        pixels = resize_to_cover(load_image(item.source), item.bucket)[None]
        controls = tuple(
            resize_to_cover(load_image(path, keep_alpha=True), bucket)
            for path, bucket in zip(item.control_sources, buckets)
        )
    return MediaSample(item=item, pixels=np.ascontiguousarray(pixels), controls=controls)


__all__ = ["load_sample"]
