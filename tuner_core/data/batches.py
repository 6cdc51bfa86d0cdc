"""Batches for caching: items that can be encoded together (same dataset, bucket, frame count, controls)."""

from __future__ import annotations

from collections.abc import Iterable

from tuner_core.data.items import MediaItem


def batch_key(item: MediaItem) -> tuple:
    """What items of one batch share: dataset, bucket, frame count and control sizes (so pixels stack)."""
    return (item.dataset_index, item.bucket, item.frame_count, item.control_buckets)


def caching_batches(items: Iterable[MediaItem], batch_size: int) -> list[list[MediaItem]]:
    """Group items by :func:`batch_key` and cut each group into batches of at most ``batch_size``.

    The order is deterministic: groups by sorted key, items in their given order within a group.

    :raises ValueError: if ``batch_size`` is not positive.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    groups: dict[tuple, list[MediaItem]] = {}
    for item in items:
        groups.setdefault(batch_key(item), []).append(item)
    batches = []
    for key in sorted(groups):
        group = groups[key]
        batches.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    return batches


__all__ = ["batch_key", "caching_batches"]
