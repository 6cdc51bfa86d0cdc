"""Videos: probing, reading chosen frames (with seeking), frame directories, bad files, atomic writing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tuner_core.errors import DataError
from tuner_core.media.video import (
    SEEK_MIN_FRAMES,
    VideoReader,
    count_frames,
    probe_video,
    read_frames,
)
from tuner_core.media.write import write_video


def pattern(count: int, width: int = 64, height: int = 48) -> np.ndarray:
    """Frames whose flat colour encodes their number (red: n % 16, green: n // 16, 16 levels apart)."""
    frames = np.zeros((count, height, width, 3), np.uint8)
    for n in range(count):
        frames[n] = (16 * (n % 16) + 8, 16 * (n // 16) + 8, 128)
    return frames


def number(pixels: np.ndarray) -> int:
    """The frame number a :func:`pattern` frame (decoded, maybe resized) shows."""
    red, green = pixels[..., 0].mean(), pixels[..., 1].mean()
    return round((red - 8) / 16) + 16 * round((green - 8) / 16)


@pytest.mark.parametrize(("name", "codec"), [("v.mp4", "libx264"), ("v.webm", "libvpx"), ("v.avi", "mpeg4")])
def test_probe_and_read(tmp_path, name, codec):
    path = write_video(tmp_path / name, pattern(40), 24.0, codec=codec)
    info = probe_video(path)
    assert info.frame_count == 40 and info.size == (64, 48) and info.fps == pytest.approx(24.0)
    assert count_frames(path) == 40
    frames = VideoReader(path).read([3, 0, 39, 3])
    assert [number(f) for f in frames] == [3, 0, 39, 3]
    assert frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8


def test_streaming_decode_stops_after_last_wanted_frame(tmp_path):
    path = write_video(tmp_path / "v.mp4", pattern(120), 30.0)
    reader = VideoReader(path)
    assert [number(f) for f in reader.read([2, 5])] == [2, 5]
    assert reader.frames_decoded <= 8


def test_seeking_skips_the_start(tmp_path):
    path = write_video(tmp_path / "v.mp4", pattern(200), 30.0, gop_size=10, options={"sc_threshold": "0"})
    reader = VideoReader(path)
    wanted = list(range(150, 160))
    assert [number(f) for f in reader.read(wanted)] == wanted
    # from the key frame at or before 150 (at most one GOP back), never from frame 0
    assert reader.frames_decoded <= 10 + len(wanted) + 4
    # just below the seek threshold: plain decoding from the start
    near = VideoReader(path)
    assert [number(f) for f in near.read([SEEK_MIN_FRAMES - 1])] == [SEEK_MIN_FRAMES - 1]
    assert near.frames_decoded == SEEK_MIN_FRAMES


def test_seeking_with_b_frames_and_resampled_gaps(tmp_path):
    path = write_video(tmp_path / "v.mkv", pattern(180), 30.0, gop_size=12, options={"bf": "3"})
    wanted = [61, 63, 65, 67, 170]
    assert [number(f) for f in VideoReader(path).read(wanted)] == wanted


def test_transform_is_applied_per_frame(tmp_path):
    path = write_video(tmp_path / "v.mp4", pattern(10), 30.0)
    out = read_frames(path, [1, 2], lambda p: p[:8, :16])
    assert out.shape == (2, 8, 16, 3) and [number(f) for f in out] == [1, 2]


def test_frame_directory_is_a_video(tmp_path):
    frames = tmp_path / "clip"
    frames.mkdir()
    for n, pixels in enumerate(pattern(12, 32, 16)):
        Image.fromarray(pixels).save(frames / f"frame_{n:03d}.png")
    (frames / "notes.txt").write_text("not a frame")
    info = probe_video(frames)
    assert info.frame_count == 12 and info.size == (32, 16) and info.fps is None
    reader = VideoReader(frames)
    assert [number(f) for f in reader.read([11, 4])] == [11, 4]
    assert reader.frames_decoded == 2  # only the wanted images are opened
    with pytest.raises(DataError, match="12 frame images"):
        reader.read([12])


def test_zero_length_and_corrupt_videos(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.mp4"):
        probe_video(empty)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match=r"junk\.mp4"):
        probe_video(junk)
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    with pytest.raises(DataError, match="no images"):
        probe_video(empty_dir)


def test_asking_past_the_end_names_the_file(tmp_path):
    path = write_video(tmp_path / "short.mp4", pattern(10), 30.0)
    with pytest.raises(DataError, match=r"short\.mp4.*frame 30"):
        VideoReader(path).read([2, 30])


def test_write_video_is_atomic_and_checks_frames(tmp_path):
    path = tmp_path / "out.mp4"
    write_video(path, pattern(3), 30.0)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="even"):
        write_video(path, pattern(3, 63, 48), 30.0)
    with pytest.raises(ValueError, match="uint8"):
        write_video(path, pattern(3).astype(np.float32), 30.0)
    with pytest.raises(Exception):  # noqa: B017 - an encoder PyAV lacks; whatever PyAV raises
        write_video(path, pattern(3), 30.0, codec="no-such-codec")
    assert path.read_bytes() == before  # failed writes left the old file alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # and no temp files
