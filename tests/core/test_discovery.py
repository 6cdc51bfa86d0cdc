"""Dataset discovery and loading: items from directories and jsonl files, extraction on real videos,
fps resampling, captions, controls, repeats, and every bad input reported once and skipped."""

from __future__ import annotations

import json
import logging
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tuner_core.architecture import MediaRules
from tuner_core.config.dataset import load_dataset_config
from tuner_core.data import discovery, sources
from tuner_core.data.discovery import discover_items
from tuner_core.data.extraction import fps_resample_map
from tuner_core.data.loader import load_sample
from tuner_core.errors import ConfigError, DataError, NotAvailableError
from tuner_core.media.write import write_video

RULES = MediaRules(fps=30.0, frame_multiple=4, bucket_step=16, min_frames=1)


def pattern(count: int, width: int = 64, height: int = 48) -> np.ndarray:
    """Frames whose flat colour encodes their number (red: n % 16, green: n // 16, 16 levels apart)."""
    frames = np.zeros((count, height, width, 3), np.uint8)
    for n in range(count):
        frames[n] = (16 * (n % 16) + 8, 16 * (n // 16) + 8, 128)
    return frames


def numbers(pixels: np.ndarray) -> list[int]:
    """The frame number each decoded :func:`pattern` frame shows."""
    red = pixels[..., 0].reshape(len(pixels), -1).mean(axis=1)
    green = pixels[..., 1].reshape(len(pixels), -1).mean(axis=1)
    return [round((r - 8) / 16) + 16 * round((g - 8) / 16) for r, g in zip(red, green)]


def video(directory: Path, name: str, count: int, fps: float = 30.0, caption: str | None = "a clip") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = write_video(directory / name, pattern(count), fps)
    if caption is not None:
        (directory / (path.stem + ".txt")).write_text(caption + "\n", encoding="utf-8")
    return path


def dataset(tmp_path: Path, body: str, index: int = 0):
    config = tmp_path / "dataset.toml"
    config.write_text(textwrap.dedent(body), encoding="utf-8")
    return load_dataset_config(config).datasets[index]


def video_dataset(tmp_path: Path, extra: str = "", resolution: str = "[32, 32]"):
    return dataset(
        tmp_path,
        f"""
        [general]
        resolution = {resolution}
        [[datasets]]
        video_directory = "{tmp_path / "videos"}"
        cache_directory = "{tmp_path / "cache"}"
        {extra}
        """,
    )


def spans(items):
    return [(i.stem, i.frame_position, i.frame_count) for i in items]


def test_video_directory_items_and_loading(tmp_path):
    video(tmp_path / "videos", "a.mp4", 40, caption="first")
    video(tmp_path / "videos", "b.mp4", 12, caption="second")
    (tmp_path / "videos" / "readme.md").write_text("ignored")
    settings = video_dataset(tmp_path, 'target_frames = [5, 9]\nframe_extraction = "head"')
    result = discover_items(settings, RULES)
    assert result.skipped == ()
    assert spans(result.items) == [("a", 0, 5), ("a", 0, 9), ("b", 0, 5), ("b", 0, 9)]
    first = result.items[0]
    assert first.caption == "first" and first.original_size == (64, 48) and first.bucket == (32, 32)
    assert first.cache_directory == tmp_path / "cache" and first.source == tmp_path / "videos" / "a.mp4"
    sample = load_sample(result.items[1], RULES)
    assert sample.pixels.shape == (9, 32, 32, 3) and sample.pixels.dtype == np.uint8
    assert numbers(sample.pixels) == list(range(9))


GUIDE = {
    "head": ("target_frames = [1, 13, 25]", [(0, 1), (0, 13), (0, 25)]),
    "chunk": ("target_frames = [13, 25]", [(0, 13), (13, 13), (26, 13), (0, 25)]),
    "slide": (
        "target_frames = [1, 13, 25]\nframe_stride = 10",
        [(0, 1), (10, 1), (20, 1), (30, 1), (0, 13), (10, 13), (20, 13), (0, 25), (10, 25)],
    ),
    "uniform": (
        "target_frames = [1, 13, 25]\nframe_sample = 4",
        [(0, 1), (13, 1), (26, 1), (39, 1), (0, 13), (9, 13), (18, 13), (27, 13)]
        + [(0, 25), (5, 25), (10, 25), (15, 25)],
    ),
    "full": ("max_frames = 31", [(0, 29)]),
}


@pytest.mark.parametrize("mode", sorted(GUIDE))
def test_every_extraction_mode_decodes_the_documented_frames(tmp_path, mode):
    keys, expected = GUIDE[mode]
    video(tmp_path / "videos", "clip.mp4", 40)
    settings = video_dataset(tmp_path, f'frame_extraction = "{mode}"\n{keys}')
    items = discover_items(settings, RULES).items
    assert [(i.frame_position, i.frame_count) for i in items] == expected
    for item in items:
        assert numbers(load_sample(item, RULES).pixels) == list(item.frame_indices)


def test_source_fps_resamples_to_the_architecture_rate(tmp_path):
    video(tmp_path / "videos", "fast.mp4", 60, fps=60.0)
    settings = video_dataset(tmp_path, 'frame_extraction = "full"\nsource_fps = 60.0')
    (item,) = discover_items(settings, RULES).items
    assert item.frame_indices == tuple(range(29)) and item.source_fps == 60.0  # 30 frames -> 29 (4n+1)
    assert numbers(load_sample(item, RULES).pixels) == list(range(0, 58, 2))


def test_source_fps_with_uneven_ratio_and_chunks(tmp_path):
    video(tmp_path / "videos", "v.mp4", 90)
    rules = MediaRules(fps=16.0, frame_multiple=4, bucket_step=16)
    settings = video_dataset(tmp_path, 'frame_extraction = "chunk"\ntarget_frames = [13]\nsource_fps = 30.0')
    items = discover_items(settings, rules).items
    kept = fps_resample_map(90, 30.0, 16.0)
    assert [(i.frame_position, i.frame_count) for i in items] == [
        (s, 13) for s in range(0, len(kept) - 12, 13)
    ]
    last = items[-1]
    assert numbers(load_sample(last, rules).pixels) == [kept[p] for p in last.frame_indices]


def test_missing_caption_is_reported_once_and_skipped(tmp_path, caplog):
    video(tmp_path / "videos", "good.mp4", 9)
    video(tmp_path / "videos", "lost.mp4", 9, caption=None)
    with caplog.at_level(logging.WARNING):
        result = discover_items(video_dataset(tmp_path, "target_frames = [9]"), RULES)
    assert [i.stem for i in result.items] == ["good"]
    (skipped,) = result.skipped
    assert skipped.path.name == "lost.mp4" and "lost.txt" in skipped.reason
    assert sum("lost.mp4" in r.getMessage() for r in caplog.records) == 1


def test_caption_extension_default_and_custom(tmp_path):
    video(tmp_path / "videos", "a.mp4", 5, caption=None)
    (tmp_path / "videos" / "a.caption").write_text("  custom caption \n")
    (tmp_path / "videos" / "a.txt").write_text("default caption")
    settings = video_dataset(tmp_path, "target_frames = [5]")
    assert settings.keys.caption_extension is None
    assert discover_items(settings, RULES).items[0].caption == "default caption"
    settings = video_dataset(tmp_path, 'target_frames = [5]\ncaption_extension = ".caption"')
    assert discover_items(settings, RULES).items[0].caption == "custom caption"


def test_corrupt_and_zero_length_videos_are_skipped(tmp_path, caplog):
    video(tmp_path / "videos", "ok.mp4", 9)
    (tmp_path / "videos" / "empty.mp4").write_bytes(b"")
    (tmp_path / "videos" / "empty.txt").write_text("x")
    (tmp_path / "videos" / "junk.mkv").write_bytes(os.urandom(4000))
    (tmp_path / "videos" / "junk.txt").write_text("x")
    with caplog.at_level(logging.WARNING):
        result = discover_items(video_dataset(tmp_path, "target_frames = [9]"), RULES)
    assert [i.stem for i in result.items] == ["ok"]
    assert sorted(s.path.name for s in result.skipped) == ["empty.mp4", "junk.mkv"]
    for name in ("empty.mp4", "junk.mkv"):
        assert sum(name in r.getMessage() for r in caplog.records) == 1


def test_clip_shorter_than_the_minimum_is_skipped(tmp_path):
    video(tmp_path / "videos", "long.mp4", 40)
    video(tmp_path / "videos", "short.mp4", 20)
    rules = MediaRules(fps=30.0, frame_multiple=4, bucket_step=16, min_frames=37)
    result = discover_items(video_dataset(tmp_path, 'frame_extraction = "full"\nmax_frames = 100'), rules)
    assert spans(result.items) == [("long", 0, 37)]
    (skipped,) = result.skipped
    assert (
        skipped.path.name == "short.mp4" and "20 frames" in skipped.reason and "minimum 37" in skipped.reason
    )


def test_target_frames_below_the_minimum_are_a_config_error(tmp_path):
    video(tmp_path / "videos", "a.mp4", 40)
    rules = MediaRules(fps=30.0, frame_multiple=4, bucket_step=16, min_frames=37)
    with pytest.raises(ConfigError, match=r"target_frames.*minimum of 37"):
        discover_items(video_dataset(tmp_path, "target_frames = [1, 25]"), rules)
    result = discover_items(video_dataset(tmp_path, "target_frames = [1, 37]"), rules)
    assert spans(result.items) == [("a", 0, 37)]


def test_nothing_left_is_a_clear_error(tmp_path):
    (tmp_path / "videos").mkdir()
    with pytest.raises(DataError, match=r"no videos found"):
        discover_items(video_dataset(tmp_path), RULES)
    video(tmp_path / "videos", "a.mp4", 5, caption=None)
    with pytest.raises(DataError, match=r"none of the 1 video.*a\.mp4: no caption file a\.txt"):
        discover_items(video_dataset(tmp_path, "target_frames = [5]"), RULES)


def test_unreadable_media_directory(tmp_path, monkeypatch):
    video(tmp_path / "videos", "a.mp4", 5)
    settings = video_dataset(tmp_path, "target_frames = [5]")

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(sources.os, "scandir", denied)
    with pytest.raises(DataError, match=r"video_directory.*cannot read the directory.*Permission denied"):
        discover_items(settings, RULES)


def test_duplicate_stems_would_collide(tmp_path):
    video(tmp_path / "videos", "a.mp4", 5)
    write_video(tmp_path / "videos" / "a.mkv", pattern(5), 30.0)
    result = discover_items(video_dataset(tmp_path, "target_frames = [1, 5]"), RULES)
    assert {i.source.name for i in result.items} == {"a.mkv"}
    assert [s.path.name for s in result.skipped] == ["a.mp4"] and "collide" in result.skipped[0].reason


def test_jsonl_videos_frame_directories_and_bad_lines(tmp_path):
    frames = tmp_path / "data" / "frames_clip"
    frames.mkdir(parents=True)
    for n, pixels in enumerate(pattern(9, 48, 48)):
        Image.fromarray(pixels).save(frames / f"{n:04d}.png")
    write_video(tmp_path / "data" / "file.mp4", pattern(9), 30.0)
    lines = [
        json.dumps({"video_path": "frames_clip", "caption": "frames"}),
        json.dumps({"video_path": str(tmp_path / "data" / "file.mp4"), "caption": "file"}),
        "{not json",
        json.dumps({"video_path": "missing.mp4", "caption": "gone"}),
        json.dumps({"video_path": "file.mp4"}),
        "",
    ]
    (tmp_path / "data" / "meta.jsonl").write_text("\n".join(lines))
    settings = dataset(
        tmp_path,
        f"""
        [[datasets]]
        video_jsonl_file = "{tmp_path / "data" / "meta.jsonl"}"
        cache_directory = "{tmp_path / "cache"}"
        resolution = [32, 32]
        target_frames = [5]
        frame_extraction = "slide"
        frame_stride = 4
        """,
    )
    result = discover_items(settings, RULES)
    assert spans(result.items) == [
        ("frames_clip", 0, 5),
        ("frames_clip", 4, 5),
        ("file", 0, 5),
        ("file", 4, 5),
    ]
    reasons = sorted(s.reason for s in result.skipped)
    assert len(reasons) == 3
    assert any("line 3: not valid JSON" in r for r in reasons)
    assert any("line 4: the file does not exist" in r for r in reasons)
    assert any("line 5: no 'caption'" in r for r in reasons)
    sample = load_sample(result.items[1], RULES)
    assert sample.pixels.shape == (5, 32, 32, 3) and numbers(sample.pixels) == [4, 5, 6, 7, 8]


def image(path: Path, size=(64, 48), mode="RGB", caption: str | None = "an image") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = (10, 200, 30, 100) if mode == "RGBA" else (10, 200, 30)
    Image.new(mode, size, color[: len(mode)]).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)
    return path


def image_dataset(tmp_path: Path, extra: str = ""):
    return dataset(
        tmp_path,
        f"""
        [[datasets]]
        image_directory = "{tmp_path / "images"}"
        resolution = [64, 64]
        enable_bucket = true
        {extra}
        """,
    )


def test_image_directory_buckets_repeats_and_bad_images(tmp_path, caplog):
    image(tmp_path / "images" / "wide.png", (128, 64))
    image(tmp_path / "images" / "tall.jpg", (48, 96))
    (tmp_path / "images" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "images" / "broken.txt").write_text("x")
    image(tmp_path / "images" / "nocap.png", caption=None)
    with caplog.at_level(logging.WARNING):
        result = discover_items(image_dataset(tmp_path, "num_repeats = 3"), RULES)
    by_stem = {i.stem: i for i in result.items}
    assert sorted(by_stem) == ["tall", "wide"]
    assert (
        by_stem["wide"].bucket[0] > by_stem["wide"].bucket[1]
        and by_stem["tall"].bucket[0] < by_stem["tall"].bucket[1]
    )
    assert by_stem["wide"].frame_indices is None and by_stem["wide"].cache_directory == tmp_path / "images"
    assert sorted(s.path.name for s in result.skipped) == ["broken.png", "nocap.png"]
    assert sum("broken.png" in r.getMessage() for r in caplog.records) == 1
    assert [i.stem for i in result.training_items()] == ["tall"] * 3 + ["wide"] * 3
    sample = load_sample(by_stem["wide"], RULES)
    w, h = by_stem["wide"].bucket
    assert sample.pixels.shape == (1, h, w, 3) and tuple(sample.pixels[0, 0, 0]) == (10, 200, 30)


def test_image_the_decoder_rejects_fails_at_load(tmp_path):
    path = tmp_path / "images" / "cut.jpg"
    path.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, pixels cut
    path.with_suffix(".txt").write_text("x")
    (item,) = discover_items(image_dataset(tmp_path), RULES).items
    with pytest.raises(DataError, match=r"cut\.jpg"):
        load_sample(item, RULES)


def test_image_controls_by_stem_with_alpha(tmp_path):
    image(tmp_path / "images" / "a.png")
    image(tmp_path / "images" / "a_1.png")
    image(tmp_path / "images" / "b.png")
    image(tmp_path / "controls" / "a.png", mode="RGBA", caption=None)
    image(tmp_path / "controls" / "a_0.png", caption=None)
    image(tmp_path / "controls" / "a_1.png", caption=None)  # the control of image a_1, not a second of a
    image(tmp_path / "controls" / "a_1_0.png", caption=None)
    settings = image_dataset(tmp_path, f'control_directory = "{tmp_path / "controls"}"')
    result = discover_items(settings, RULES)
    by_stem = {i.stem: i for i in result.items}
    assert [p.name for p in by_stem["a"].control_sources] == ["a.png", "a_0.png"]
    assert [p.name for p in by_stem["a_1"].control_sources] == ["a_1.png", "a_1_0.png"]
    assert [s.path.name for s in result.skipped] == ["b.png"] and "b.*" in result.skipped[0].reason
    sample = load_sample(by_stem["a"], RULES)
    h, w = sample.pixels.shape[1:3]
    assert sample.controls[0].shape == (h, w, 4) and sample.controls[1].shape == (h, w, 3)


def test_control_sizes_follow_no_resize_and_control_resolution(tmp_path):
    image(tmp_path / "images" / "a.png", (64, 64))
    image(tmp_path / "controls" / "a.png", (100, 50), caption=None)
    keys = f'control_directory = "{tmp_path / "controls"}"'
    (item,) = discover_items(image_dataset(tmp_path, keys + "\nno_resize_control = true"), RULES).items
    assert item.control_buckets == ((96, 48),)
    (item,) = discover_items(image_dataset(tmp_path, keys + "\ncontrol_resolution = [64, 64]"), RULES).items
    # widths around sqrt(4096 * 2) on the grid: 80x48 (aspect 1.67) is nearest to 2 within area 4096
    assert item.control_buckets == ((80, 48),)
    (w, h) = item.control_buckets[0]
    assert load_sample(item, RULES).controls[0].shape == (h, w, 3)


def test_image_jsonl_with_numbered_controls(tmp_path):
    data = tmp_path / "data"
    image(data / "t.png", caption=None)
    image(data / "c0.png", caption=None)
    image(data / "c1.png", caption=None)
    record = {"image_path": "t.png", "control_path_1": "c1.png", "control_path_0": "c0.png", "caption": "x"}
    (data / "m.jsonl").write_text(
        json.dumps(record) + "\n" + json.dumps({"image_path": "t.png", "caption": "y"})
    )
    settings = dataset(
        tmp_path,
        f"""
        [[datasets]]
        image_jsonl_file = "{data / "m.jsonl"}"
        cache_directory = "{tmp_path / "cache"}"
        resolution = 32
        """,
    )
    result = discover_items(settings, RULES)
    (item,) = result.items
    assert [p.name for p in item.control_sources] == ["c0.png", "c1.png"]
    assert "other lines give control_path" in result.skipped[0].reason


def test_short_control_video_repeats_its_last_frame(tmp_path):
    video(tmp_path / "videos", "a.mp4", 20)
    (tmp_path / "controls").mkdir()
    write_video(tmp_path / "controls" / "a.mov", pattern(6), 30.0)
    settings = video_dataset(
        tmp_path,
        f'target_frames = [9]\nframe_extraction = "chunk"\ncontrol_directory = "{tmp_path / "controls"}"',
    )
    items = discover_items(settings, RULES).items
    assert [p.name for p in items[0].control_sources] == ["a.mov"]
    second = load_sample(items[1], RULES)  # positions 9..17, control has 6 frames
    (control,) = second.controls
    assert control.shape == (9, 32, 32, 3) and numbers(control) == [5] * 9
    first = load_sample(items[0], RULES)
    assert numbers(first.controls[0]) == [0, 1, 2, 3, 4, 5, 5, 5, 5]


def test_video_without_control_is_skipped(tmp_path):
    video(tmp_path / "videos", "a.mp4", 5)
    (tmp_path / "controls").mkdir()
    settings = video_dataset(tmp_path, f'target_frames = [5]\ncontrol_directory = "{tmp_path / "controls"}"')
    with pytest.raises(DataError, match="no control file a"):
        discover_items(settings, RULES)


def test_frame_rate_hint_and_unsupported_kinds(tmp_path, caplog):
    video(tmp_path / "videos", "slow.mp4", 5, fps=24.0)
    with caplog.at_level(logging.WARNING, logger=discovery.__name__):
        discover_items(video_dataset(tmp_path, "target_frames = [5]"), RULES)
    assert any("source_fps" in r.getMessage() and "24" in r.getMessage() for r in caplog.records)
    no_videos = MediaRules(supports_videos=False)
    with pytest.raises(ConfigError, match="cannot train on video datasets"):
        discover_items(video_dataset(tmp_path, "target_frames = [5]"), no_videos)
    image(tmp_path / "images" / "a.png")
    with pytest.raises(NotAvailableError, match="multiple_target"):
        discover_items(image_dataset(tmp_path, "multiple_target = true"), RULES)
