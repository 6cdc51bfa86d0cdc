"""Dataset items: what one cache file set is made from."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import numpy as np


@attrs.frozen
class MediaItem:
    """One clip or image of a dataset, before decoding.

    :param stem: source file name without extension; the start of every cache file name.
    :param source: the video or image file (or a directory of frames).
    :param dataset_index: position of the dataset in the TOML ``[[datasets]]`` list.
    :param cache_directory: where this item's caches live.
    :param original_size: ``(width, height)`` of the source media.
    :param bucket: ``(width, height)`` the media is resized and cropped to.
    :param caption: the item's caption.
    :param frame_indices: source frame indices (after fps resampling) for videos, ``None`` for images.
    :param control_sources: control images or videos belonging to the item.
    :param source_fps: the dataset's ``source_fps``: ``frame_indices`` count frames of the video resampled
        from this rate to the architecture's; ``None`` when every frame of the source is used.
    :param control_buckets: ``(width, height)`` each control is resized to, one per control source
        (image controls may differ from ``bucket`` with ``no_resize_control`` / ``control_resolution``).
    :param dataset_options: the architecture's keys of the item's dataset table (its ``dataset_options``
        instance, e.g. FramePack's ``fp_latent_window_size``), or ``None``.
    """

    stem: str
    source: Path
    dataset_index: int
    cache_directory: Path
    original_size: tuple[int, int]
    bucket: tuple[int, int]
    caption: str
    frame_indices: tuple[int, ...] | None = None
    control_sources: tuple[Path, ...] = ()
    source_fps: float | None = None
    control_buckets: tuple[tuple[int, int], ...] = ()
    dataset_options: Any = attrs.field(default=None, eq=False, repr=False)

    @property
    def is_video(self) -> bool:
        """Whether this item is a clip of a video (as opposed to an image)."""
        return self.frame_indices is not None

    @property
    def frame_position(self) -> int:
        """Index of the first frame of the clip in the (resampled) source."""
        return self.frame_indices[0] if self.frame_indices else 0

    @property
    def frame_count(self) -> int:
        """Number of frames of the clip (1 for images)."""
        return len(self.frame_indices) if self.frame_indices is not None else 1


@attrs.frozen(eq=False)
class MediaSample:
    """A decoded item: pixels resized and cropped to the item's bucket.

    :param pixels: ``(F, H, W, 3)`` uint8 RGB frames (F=1 for images).
    :param controls: decoded controls, one per control source: images ``(H, W, C)`` uint8 (C=3, or 4 when
        the file has alpha), control videos ``(F, H, W, 3)`` uint8 with the item's frames.
    """

    item: MediaItem
    pixels: np.ndarray
    controls: tuple[np.ndarray, ...] = ()
