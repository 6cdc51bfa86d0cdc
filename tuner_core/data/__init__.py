"""Datasets: media discovery, captions, frame extraction, buckets and batches."""

from tuner_core.data.batches import batch_key, caching_batches
from tuner_core.data.buckets import BucketSelector, bucket_resolutions, fit_bucket
from tuner_core.data.discovery import DiscoveryResult, bucket_selector, discover_items
from tuner_core.data.extraction import (
    extract_clips,
    fps_resample_map,
    normalise_target_frames,
    round_frames,
    source_frames,
)
from tuner_core.data.items import MediaItem, MediaSample
from tuner_core.data.loader import load_sample
from tuner_core.data.sources import DEFAULT_CAPTION_EXTENSION, MediaEntry, SkippedMedia, list_media

__all__ = [
    "DEFAULT_CAPTION_EXTENSION",
    "BucketSelector",
    "DiscoveryResult",
    "MediaEntry",
    "MediaItem",
    "MediaSample",
    "SkippedMedia",
    "batch_key",
    "bucket_resolutions",
    "bucket_selector",
    "caching_batches",
    "discover_items",
    "extract_clips",
    "fit_bucket",
    "fps_resample_map",
    "list_media",
    "load_sample",
    "normalise_target_frames",
    "round_frames",
    "source_frames",
]
