"""Section count, paddings and section-specific prompt strings, against the reference's rules."""

from __future__ import annotations

import logging

import pytest

from tuner_core import ConfigError
from tuner_framepack.generation import (
    parse_latent_paddings,
    parse_section_strings,
    section_count,
    section_key,
    section_latent_paddings,
    section_seconds,
    unused_section_keys,
    video_frame_count,
    video_latent_count,
)


def reference_section_count(seconds: float, window: int) -> int:
    """fpack_generate_video.generate, verbatim arithmetic."""
    total = (seconds * 30) / (window * 4)
    return int(max(round(total), 1))


@pytest.mark.parametrize("seconds", [0.1, 1.0, 1.8, 2.0, 4.8, 5.0, 5.4, 6.6, 10.0, 60.0, 120.0, 1.2 * 3])
@pytest.mark.parametrize("window", [9, 5, 1])
def test_section_count_from_seconds_matches_the_reference(seconds: float, window: int) -> None:
    assert section_count(seconds, window) == reference_section_count(seconds, window)


def test_section_count_examples_and_banker_rounding() -> None:
    assert section_count(5.0, 9) == 4  # 150 / 36 = 4.17
    assert section_count(60.0, 9) == 50
    assert section_count(0.1, 9) == 1  # never below one section
    assert section_count(5.4, 9) == 4  # 162 / 36 = 4.5 rounds half to even
    assert section_count(6.6, 9) == 6  # 5.5 -> 6
    assert video_latent_count(4, 9) == 37 and video_frame_count(4, 9) == 145
    assert video_frame_count(50, 9) == 1801


def test_video_sections_gives_that_many_sections_at_any_fps() -> None:
    assert section_count(5.0, 9, video_sections=7) == 7
    assert section_seconds(7, 9, 30) == pytest.approx(253 / 30)
    # at 30 fps the reference's seconds round-trip gives the same count
    assert reference_section_count(section_seconds(7, 9, 30), 9) == 7


@pytest.mark.parametrize(
    "kwargs",
    [{"video_seconds": 0.0}, {"video_seconds": -1.0}, {"video_seconds": None}, {"video_sections": 0}],
)
def test_bad_lengths_are_config_errors(kwargs: dict) -> None:
    seconds = kwargs.pop("video_seconds", 5.0)
    with pytest.raises(ConfigError, match="--video_s"):
        section_count(seconds, 9, **kwargs)


@pytest.mark.parametrize("sections", range(1, 9))
def test_default_paddings_are_the_reference_ones(sections: int) -> None:
    expected = list(reversed(range(sections)))
    if sections > 4:
        expected = [3] + [2] * (sections - 3) + [1, 0]
    assert section_latent_paddings(sections) == expected


def test_padding_override_shorter_longer_exact(caplog: pytest.LogCaptureFixture) -> None:
    assert section_latent_paddings(4, [0, 0, 0, 0]) == [0, 0, 0, 0]
    with caplog.at_level(logging.WARNING):
        assert section_latent_paddings(6, [1, 1]) == [1, 1, 2, 2, 1, 0]
        assert section_latent_paddings(3, [1, 1]) == [1, 1, 0]  # the reference crashes here (S <= 4)
        assert section_latent_paddings(2, [3, 2, 1, 0]) == [3, 2]
    assert len(caplog.records) == 3


def test_parse_latent_paddings() -> None:
    assert parse_latent_paddings("3,2,1,0") == [3, 2, 1, 0]
    assert parse_latent_paddings(" 3, 2 ,1") == [3, 2, 1]
    for bad in ("3,,1", "a", "3,-1"):
        with pytest.raises(ConfigError, match="--latent_paddings"):
            parse_latent_paddings(bad)


# -- section strings -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, {}),
        ("a cat", {0: "a cat"}),
        (" 1:a cat ", {0: " 1:a cat "}),  # without ;;; the string is taken whole
        ("0:a;;;-1:b;;;1-2:c", {0: "a", -1: "b", 1: "c", 2: "c"}),
        ("a;;;1:b", {0: "a", 1: "b"}),  # a piece without a colon is section 0
        (" 0 : a ;;; 2: b ", {0: "a", 2: "b"}),  # index and text are stripped
        ("1:b;;;3:d", {1: "b", 3: "d", 0: "b"}),  # 0 falls back to the smallest non-negative index
        ("-1:z;;;-3:x", {-1: "z", -3: "x", 0: "x"}),  # all negative: the most negative
        ("-2:y;;;2:c", {-2: "y", 2: "c", 0: "c"}),
        ("0:a;;;0:b", {0: "b"}),  # later pieces win
        ("-1-2:r;;;3:s", {-1: "r", 0: "r", 1: "r", 2: "r", 3: "s"}),  # a range may start negative
        ("0:style: anime;;;1:x", {0: "style: anime", 1: "x"}),  # only the first colon separates
        ("0:C:/img/a.png;;;1:D:\\b.png", {0: "C:/img/a.png", 1: "D:\\b.png"}),
    ],
)
def test_section_strings_parse_as_the_reference(text: str | None, expected: dict) -> None:
    assert parse_section_strings(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0:a;;;", "empty section"),
        (";;;1:a", "empty section"),
        ("a photo: cat;;;1:dog", "not a section index"),
        ("C:/a.png;;;1:b.png", "not a section index"),
        ("2-1:x;;;0:y", "range '2-1' is empty"),
        ("-3--1:x;;;0:y", "not a section index"),
    ],
)
def test_section_strings_the_reference_misreads_are_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="--image_path") as info:
        parse_section_strings(text, option="--image_path")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_section_key_prefers_from_last_then_time_index_then_zero() -> None:
    keys = parse_section_strings("0:a;;;-1:last;;;1:one;;;-4:first")
    sections = 4
    picked = {s: section_key(keys, s, sections) for s in range(sections)}
    assert picked == {0: -4, 1: 1, 2: 0, 3: -1}
    assert section_key({0: "x"}, 5, 9) == 0
    assert unused_section_keys(keys, 3) == [-4]
    assert unused_section_keys({0: "", 3: "", -3: ""}, 3) == [3]
