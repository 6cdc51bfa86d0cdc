"""From a dataset's settings to its items: listing, probing, bucket choice and frame extraction.

:func:`discover_items` lists a dataset's media (see :mod:`tuner_core.data.sources`), probes each one
(size, frame count; the first frame of a video is decoded), picks its bucket and, for videos, cuts the
clips ``frame_extraction`` asks for. Media that cannot be used are reported once and returned in
:attr:`DiscoveryResult.skipped`; a dataset left with nothing raises :class:`~tuner_core.errors.DataError`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import attrs

from tuner_core.architecture import MediaRules
from tuner_core.config.dataset import DEFAULT_TARGET_FRAMES, DatasetSettings, ImageKeys, VideoKeys
from tuner_core.data.buckets import BucketSelector, Size, fit_bucket, floor_to_step
from tuner_core.data.extraction import extract_clips, fps_resample_map, normalise_target_frames
from tuner_core.data.items import MediaItem
from tuner_core.data.sources import MediaEntry, SkippedMedia, list_media, skip
from tuner_core.errors import ConfigError, DataError, NotAvailableError
from tuner_core.media.image import image_size
from tuner_core.media.video import probe_video

logger = logging.getLogger(__name__)

# A probed frame rate further than this from the architecture's draws a hint to set source_fps.
_FPS_TOLERANCE = 0.01


@attrs.frozen
class DiscoveryResult:
    """The items of one dataset and the media left out.

    :param items: one item per image or per video clip, in listing order (clips of a video together).
    :param skipped: media left out, with the reason each was reported.
    :param num_repeats: how often each item counts per training epoch.
    """

    dataset_index: int
    items: tuple[MediaItem, ...]
    skipped: tuple[SkippedMedia, ...]
    num_repeats: int = 1

    def training_items(self) -> list[MediaItem]:
        """The items as one training epoch sees them: each repeated ``num_repeats`` times, side by side."""
        return [item for item in self.items for _ in range(self.num_repeats)]


def bucket_selector(settings: DatasetSettings, rules: MediaRules) -> BucketSelector:
    """The :class:`BucketSelector` of a dataset under an architecture's bucket step.

    :raises ConfigError: if the dataset's resolution is below one bucket step.
    """
    keys = settings.keys
    try:
        return BucketSelector(
            resolution=keys.resolution,
            step=rules.bucket_step,
            enable_bucket=keys.enable_bucket,
            no_upscale=keys.bucket_no_upscale,
        )
    except ValueError as exc:
        raise ConfigError(f"{settings.table}: key 'resolution': {exc}") from exc


def _without_path(exc: DataError, path: Path) -> str:
    """The error's text without a leading ``<path>: `` (the skip report names the file already)."""
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _control_bucket(size: Size, bucket: Size, keys: ImageKeys, step: int) -> Size:
    """The size a control image is resized to (``no_resize_control`` / ``control_resolution``)."""
    limit = keys.control_resolution
    if keys.no_resize_control:
        if limit is not None and size[0] * size[1] > limit[0] * limit[1]:
            return fit_bucket(size, limit, step)
        return (floor_to_step(size[0], step), floor_to_step(size[1], step))
    if limit is not None:
        return fit_bucket(size, limit, step)
    return bucket


def _image_items(
    settings: DatasetSettings, entries: list[MediaEntry], rules: MediaRules, skipped: list[SkippedMedia]
) -> list[MediaItem]:
    keys = settings.keys
    assert isinstance(keys, ImageKeys)
    selector = bucket_selector(settings, rules)
    items = []
    for entry in entries:
        try:
            size = image_size(entry.source)
            control_sizes = [image_size(c) for c in entry.controls]
        except DataError as exc:
            skip(skipped, entry.source, _without_path(exc, entry.source))
            continue
        bucket = selector.select(size)
        control_buckets = tuple(_control_bucket(s, bucket, keys, rules.bucket_step) for s in control_sizes)
        too_small = [b for b in (bucket, *control_buckets) if min(b) < rules.bucket_step]
        if too_small:
            skip(
                skipped,
                entry.source,
                f"{size[0]}x{size[1]} is smaller than one {rules.bucket_step}-pixel bucket step",
            )
            continue
        items.append(
            MediaItem(
                stem=entry.source.stem,
                source=entry.source,
                dataset_index=settings.index,
                cache_directory=settings.cache_directory,
                original_size=size,
                bucket=bucket,
                caption=entry.caption,
                control_sources=entry.controls,
                control_buckets=control_buckets,
                dataset_options=settings.extra,
            )
        )
    return items


def _video_targets(settings: DatasetSettings, rules: MediaRules) -> tuple[int, ...]:
    """The dataset's rounded ``target_frames`` that reach the architecture's minimum (reported once)."""
    keys = settings.keys
    assert isinstance(keys, VideoKeys)
    if keys.frame_extraction == "full":
        return ()
    targets = normalise_target_frames(keys.target_frames, rules.frame_multiple)
    if sorted(set(keys.target_frames)) != list(targets):
        logger.warning(
            "%s: target_frames %s rounded down to %s (frame counts must be %d*n+1)",
            settings.table,
            list(keys.target_frames),
            list(targets),
            rules.frame_multiple,
        )
    kept = tuple(t for t in targets if t >= rules.min_frames)
    if not kept:
        given = (
            f"{list(targets)} (the default of target_frames, which this dataset does not set)"
            if list(keys.target_frames) == DEFAULT_TARGET_FRAMES
            else str(list(targets))
        )
        raise ConfigError(
            f"{settings.table}: key 'target_frames': every clip length {given} is below the architecture's "
            f"minimum of {rules.min_frames} frames; set target_frames = [{rules.min_frames}] or longer, or "
            "frame_extraction = 'full'"
        )
    if len(kept) < len(targets):
        logger.warning(
            "%s: target_frames %s are below the architecture's minimum of %d frames and are not used",
            settings.table,
            [t for t in targets if t < rules.min_frames],
            rules.min_frames,
        )
    return kept


def _video_items(
    settings: DatasetSettings, entries: list[MediaEntry], rules: MediaRules, skipped: list[SkippedMedia]
) -> list[MediaItem]:
    keys = settings.keys
    assert isinstance(keys, VideoKeys)
    selector = bucket_selector(settings, rules)
    targets = _video_targets(settings, rules)
    mode = keys.frame_extraction
    if mode == "uniform" and keys.frame_sample == 1:
        logger.info(
            "%s: frame_extraction 'uniform' with frame_sample = 1 takes the head of each video",
            settings.table,
        )
    off_rate: list[tuple[Path, float]] = []
    items = []
    for entry in entries:
        try:
            info = probe_video(entry.source)
        except DataError as exc:
            skip(skipped, entry.source, _without_path(exc, entry.source))
            continue
        if keys.source_fps is None and info.fps and abs(info.fps - rules.fps) > _FPS_TOLERANCE * rules.fps:
            off_rate.append((entry.source, info.fps))
        frame_count = len(fps_resample_map(info.frame_count, keys.source_fps, rules.fps))
        clips = extract_clips(
            frame_count,
            mode,
            targets,
            frame_stride=keys.frame_stride,
            frame_sample=keys.frame_sample,
            max_frames=keys.max_frames,
            frame_multiple=rules.frame_multiple,
        )
        clips = [c for c in clips if len(c) >= rules.min_frames]
        if not clips:
            resampled = f" ({frame_count} after resampling to {rules.fps:g} fps)" if keys.source_fps else ""
            need = max(rules.min_frames, min(targets)) if targets else rules.min_frames
            skip(
                skipped,
                entry.source,
                f"{info.frame_count} frames{resampled}, shorter than the {need} frames a clip needs "
                f"(architecture minimum {rules.min_frames})",
            )
            continue
        bucket = selector.select(info.size)
        if min(bucket) < rules.bucket_step:
            skip(
                skipped,
                entry.source,
                f"{info.size[0]}x{info.size[1]} is smaller than one {rules.bucket_step}-pixel bucket step",
            )
            continue
        stem = entry.source.stem if entry.source.is_file() else entry.source.name
        for clip in clips:
            items.append(
                MediaItem(
                    stem=stem,
                    source=entry.source,
                    dataset_index=settings.index,
                    cache_directory=settings.cache_directory,
                    original_size=info.size,
                    bucket=bucket,
                    caption=entry.caption,
                    frame_indices=clip,
                    control_sources=entry.controls,
                    source_fps=keys.source_fps,
                    control_buckets=(bucket,) * len(entry.controls),
                    dataset_options=settings.extra,
                )
            )
    if off_rate:
        path, fps = off_rate[0]
        logger.warning(
            "%s: %d video(s) are not %g fps (e.g. %s at %g fps) and every frame is used as is; set source_fps "
            "in the dataset to resample them to %g fps",
            settings.table,
            len(off_rate),
            rules.fps,
            path.name,
            fps,
            rules.fps,
        )
    return items


def _unique_stems(items: list[MediaItem], skipped: list[SkippedMedia]) -> list[MediaItem]:
    """Drop media whose stem an earlier medium already has: their cache files would collide."""
    owner: dict[str, Path] = {}
    reported: set[Path] = set()
    kept = []
    for item in items:
        first = owner.setdefault(item.stem, item.source)
        if first == item.source:
            kept.append(item)
        elif item.source not in reported:  # a video's clips share its source: report it once
            reported.add(item.source)
            skip(
                skipped,
                item.source,
                f"same name {item.stem!r} as {first}; cache files would collide, rename one",
            )
    return kept


def discover_items(settings: DatasetSettings, rules: MediaRules) -> DiscoveryResult:
    """List, probe and cut a dataset into items for caching.

    :param settings: one dataset of a loaded dataset config.
    :param rules: the architecture's media rules (frame rate, frame multiple, bucket step, minimum frames).
    :raises ConfigError: if the architecture cannot use this kind of dataset, or no target length is usable.
    :raises NotAvailableError: for ``multiple_target`` image datasets (not supported yet).
    :raises DataError: if the media cannot be listed, or no usable medium is left (the message lists why).
    """
    keys = settings.keys
    kind = "video" if settings.is_video else "image"
    if settings.is_video and not rules.supports_videos or not settings.is_video and not rules.supports_images:
        raise ConfigError(f"{settings.table}: this architecture cannot train on {kind} datasets")
    if isinstance(keys, ImageKeys) and keys.multiple_target:
        raise NotAvailableError(f"{settings.table}: key 'multiple_target' is not supported yet")

    entries, skipped = list_media(settings)
    if settings.is_video:
        items = _video_items(settings, entries, rules, skipped)
    else:
        items = _image_items(settings, entries, rules, skipped)
    items = _unique_stems(items, skipped)
    if not items:
        if not skipped:
            raise DataError(f"{settings.table}: no {kind}s found in {settings.media_source}")
        reasons = "; ".join(f"{s.path.name}: {s.reason}" for s in skipped[:3])
        more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
        raise DataError(
            f"{settings.table}: none of the {len(skipped)} {kind}(s) in {settings.media_source} can be used: {reasons}{more}"
        )
    logger.info(
        "%s: %d item(s) from %s, %d skipped", settings.table, len(items), settings.media_source, len(skipped)
    )
    return DiscoveryResult(
        dataset_index=settings.index, items=tuple(items), skipped=tuple(skipped), num_repeats=keys.num_repeats
    )


__all__ = ["DiscoveryResult", "bucket_selector", "discover_items"]
