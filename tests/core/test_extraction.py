"""Frame extraction picks the frames the dataset guide documents; fps resampling keeps the reference's frames."""

from __future__ import annotations

import pytest

from tuner_core.data.extraction import (
    extract_clips,
    fps_resample_map,
    normalise_target_frames,
    round_frames,
    source_frames,
)


def spans(clips):
    """(start, length) of each clip, after checking each is a run of consecutive positions."""
    for clip in clips:
        assert list(clip) == list(range(clip[0], clip[0] + len(clip)))
    return [(c[0], len(c)) for c in clips]


def test_round_frames_to_multiple_n_plus_one():
    expected = {1: 1, 2: 1, 4: 1, 5: 5, 8: 5, 9: 9, 36: 33, 37: 37, 40: 37, 41: 41}
    assert {n: round_frames(n, 4) for n in expected} == expected
    assert [round_frames(n, 1) for n in (1, 7, 40)] == [1, 7, 40]
    assert round_frames(0, 4) == 0
    assert normalise_target_frames([45, 25, 1, 26, 25], 4) == (1, 25, 45)


# The guide's 40-frame diagrams (docs/dataset_config.md of the reference tools), as (start, length).
def test_head_matches_guide():
    assert spans(extract_clips(40, "head", [1, 13, 25])) == [(0, 1), (0, 13), (0, 25)]


def test_chunk_matches_guide():
    assert spans(extract_clips(40, "chunk", [13, 25])) == [(0, 13), (13, 13), (26, 13), (0, 25)]


def test_slide_matches_guide():
    assert spans(extract_clips(40, "slide", [1, 13, 25], frame_stride=10)) == [
        (0, 1),
        (10, 1),
        (20, 1),
        (30, 1),
        (0, 13),
        (10, 13),
        (20, 13),
        (0, 25),
        (10, 25),
    ]


def test_uniform_matches_guide():
    assert spans(extract_clips(40, "uniform", [1, 13, 25], frame_sample=4)) == [
        (0, 1),
        (13, 1),
        (26, 1),
        (39, 1),
        (0, 13),
        (9, 13),
        (18, 13),
        (27, 13),
        (0, 25),
        (5, 25),
        (10, 25),
        (15, 25),
    ]


def test_uniform_with_one_sample_is_head():
    assert extract_clips(40, "uniform", [1, 13, 25], frame_sample=1) == extract_clips(40, "head", [1, 13, 25])


def test_uniform_on_short_video_does_not_repeat_clips():
    # integer linspace(0, 1, 4) is [0, 0, 0, 1]: the same clip three times would overwrite its own cache
    assert spans(extract_clips(10, "uniform", [9], frame_sample=4)) == [(0, 9), (1, 9)]


def test_full_matches_guide():
    # the guide's videos of 20, 25 and 35 frames with max_frames 31: 17 and 25 frames as drawn; the third
    # is trimmed to 31 and, 31 not being 4n+1, rounded down to 29 (the reference code does the same)
    got = [spans(extract_clips(n, "full", [1], max_frames=31, frame_multiple=4)) for n in (20, 25, 35)]
    assert got == [[(0, 17)], [(0, 25)], [(0, 29)]]
    assert spans(extract_clips(35, "full", [1], max_frames=31, frame_multiple=1)) == [(0, 31)]


def test_targets_are_rounded_and_targets_longer_than_video_skipped():
    assert spans(extract_clips(30, "head", [26, 45], frame_multiple=4)) == [(0, 25)]
    assert extract_clips(10, "head", [13]) == []
    assert extract_clips(0, "full", [1]) == []


def test_bad_mode_is_an_error():
    with pytest.raises(ValueError, match="frame_extraction"):
        extract_clips(40, "random", [1])


def reference_resample(frame_count, source_fps, target_fps):
    """The reference tools' decode loop, run literally: which frames survive resampling."""
    delta = target_fps / source_fps
    with_fraction = 0.0
    previous = -1
    kept = []
    for i in range(frame_count):
        index = int(with_fraction)
        with_fraction += delta
        if index == previous:
            continue
        previous = index
        kept.append(i)
    return kept


def test_fps_resampling_halves_exactly():
    assert fps_resample_map(12, 30.0, 15.0) == [0, 2, 4, 6, 8, 10]
    assert fps_resample_map(5, None, 30.0) == [0, 1, 2, 3, 4]
    # a source slower than the model keeps every frame (no duplication)
    assert fps_resample_map(5, 24.0, 30.0) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("source", "target"), [(30.0, 16.0), (24.0, 16.0), (29.97, 24.0), (60.0, 30.0), (25.0, 24.0)]
)
def test_fps_resampling_matches_reference_loop(source, target):
    assert fps_resample_map(500, source, target) == reference_resample(500, source, target)


def test_fps_resampling_30_to_16_prefix():
    # 16/30 = 0.533..: positions 0, .53, 1.07, 1.6, 2.13, 2.67, 3.2 ... keep the first frame of each integer
    assert fps_resample_map(15, 30.0, 16.0)[:7] == [0, 2, 4, 6, 8, 10, 12]


def test_source_frames_maps_positions_back():
    full = fps_resample_map(300, 30.0, 16.0)
    positions = [5, 6, 7, 100, 5]
    assert source_frames(positions, 30.0, 16.0) == [full[p] for p in positions]
    assert source_frames(positions, None, 16.0) == positions
