"""Aspect-ratio buckets (sizes, nearest aspect, no-upscale, fixed resolution) and caching batches."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tuner_core.data.batches import caching_batches
from tuner_core.data.buckets import BucketSelector, bucket_resolutions, fit_bucket
from tuner_core.data.items import MediaItem


def test_bucket_sizes_keep_area_and_step():
    buckets = bucket_resolutions((960, 544), 16)
    area = 960 * 544
    side = int(math.sqrt(area))  # 722
    assert buckets == tuple(sorted(set(buckets)))
    for w, h in buckets:
        assert w % 16 == 0 and h % 16 == 0
        assert w * h <= area
        # each is the tallest grid height for its width: one more step would exceed the area
        assert w * (h + 16) > area or h * (w + 16) > area
        assert (h, w) in buckets
    widths = sorted({min(b) for b in buckets})
    assert widths[0] == (side // 2) - (side // 2) % 16 == 352
    # widths run 352, 368, ... up to the first step past sqrt(A)
    assert (720, 720) in buckets and (352, 1472) in buckets and (1472, 352) in buckets
    assert (960, 544) in buckets


def test_640_square_buckets():
    buckets = bucket_resolutions((640, 640), 16)
    assert (640, 640) in buckets and (512, 800) in buckets and (800, 512) in buckets
    assert (320, 1280) in buckets and (1280, 320) in buckets
    assert (336, 1216) in buckets  # 409600 // 336 = 1219 -> 1216
    assert len(buckets) == 2 * 21 - 1  # widths 320..640 (21 of them), both ways, the square once


def test_nearest_aspect_ratio_is_chosen():
    selector = BucketSelector((640, 640), 16, enable_bucket=True)
    assert selector.select((1000, 1000)) == (640, 640)
    assert selector.select((1920, 1080)) == min(selector.buckets, key=lambda b: abs(b[0] / b[1] - 16 / 9))
    w, h = selector.select((1920, 1080))
    assert w > h and abs(w / h - 16 / 9) < 0.05
    w, h = selector.select((1080, 1920))
    assert h > w
    # small media are enlarged to a full-area bucket without no_upscale
    assert selector.select((64, 48)) == selector.select((640, 480))


def test_bucket_no_upscale_keeps_small_media_at_own_size():
    selector = BucketSelector((640, 640), 16, enable_bucket=True, no_upscale=True)
    assert selector.select((300, 200)) == (288, 192)
    assert selector.select((64, 48)) == (64, 48)
    # larger than the target area: bucketed as usual
    assert selector.select((1920, 1080)) == BucketSelector((640, 640), 16, enable_bucket=True).select(
        (1920, 1080)
    )
    # narrower than a step: a zero side, which discovery reports as too small
    assert selector.select((10, 10)) == (0, 0)


def test_without_buckets_every_medium_gets_the_resolution():
    selector = BucketSelector((960, 544), 16, enable_bucket=False, no_upscale=True)
    assert selector.buckets == ((960, 544),)
    assert selector.select((1920, 1080)) == (960, 544)
    assert selector.select((100, 400)) == (960, 544)  # no_upscale only acts with buckets
    # a resolution off the grid is floored onto it
    assert BucketSelector((500, 300), 16).select((10, 10)) == (496, 288)


def test_step_comes_from_the_architecture():
    for w, h in BucketSelector((512, 512), 64, enable_bucket=True).buckets:
        assert w % 64 == 0 and h % 64 == 0


def test_resolution_below_one_step_is_rejected():
    with pytest.raises(ValueError, match="too small"):
        BucketSelector((8, 8), 16)


def test_fit_bucket_near_aspect_and_area():
    w, h = fit_bucket((1920, 1080), (1024, 1024), 16)
    assert w % 16 == 0 and h % 16 == 0 and w * h <= 1024 * 1024
    assert abs(w / h - 16 / 9) < 0.03
    assert fit_bucket((1000, 1000), (512, 512), 16) == (512, 512)


def item(name: str, bucket, frames: int | None, dataset: int = 0, controls=()) -> MediaItem:
    return MediaItem(
        stem=name,
        source=Path(name),
        dataset_index=dataset,
        cache_directory=Path("cache"),
        original_size=(64, 48),
        bucket=bucket,
        caption="",
        frame_indices=None if frames is None else tuple(range(frames)),
        control_buckets=controls,
    )


def test_caching_batches_group_by_bucket_and_frame_count():
    items = [
        item("a", (64, 48), 5),
        item("b", (48, 64), 5),
        item("c", (64, 48), 9),
        item("d", (64, 48), 5),
        item("e", (64, 48), 5),
        item("f", (64, 48), 5, dataset=1),
        item("g", (64, 48), None),
        item("h", (64, 48), None, controls=((32, 32),)),
    ]
    batches = caching_batches(items, 2)
    names = [[i.stem for i in b] for b in batches]
    assert sorted(n for b in names for n in b) == sorted(i.stem for i in items)
    for batch in batches:
        assert len(batch) <= 2
        assert len({(i.dataset_index, i.bucket, i.frame_count, i.control_buckets) for i in batch}) == 1
    assert ["a", "d"] in names and ["e"] in names  # order kept inside a group
    assert names == [[i.stem for i in b] for b in caching_batches(list(items), 2)]  # deterministic
    with pytest.raises(ValueError):
        caching_batches(items, 0)
