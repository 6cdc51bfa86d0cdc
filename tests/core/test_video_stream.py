"""Videos written piece by piece: the same file as one call, nothing at the final path until it is complete."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from tuner_core.media.video import read_frames
from tuner_core.media.write import VideoStream, write_sample, write_video


def _frames(count: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (1, size, size, 3), dtype=np.uint8)
    return np.concatenate([np.roll(base, shift=i, axis=2) for i in range(count)])


def test_pieces_make_the_same_file_as_one_call(tmp_path):
    frames = _frames(12)
    whole = write_video(tmp_path / "whole.mp4", frames, 10.0)
    with VideoStream(tmp_path / "pieces.mp4", 10.0) as video:
        for piece in (frames[:5], frames[5:6], frames[6:]):
            video.write(piece)
    assert video.frames_written == 12
    assert np.array_equal(read_frames(whole, range(12)), read_frames(tmp_path / "pieces.mp4", range(12)))


def test_an_error_mid_stream_leaves_no_file(tmp_path):
    path = tmp_path / "killed.mp4"
    with pytest.raises(KeyboardInterrupt), VideoStream(path, 10.0) as video:
        video.write(_frames(4))
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_stream_without_frames_is_an_error_and_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match="no frames"), VideoStream(tmp_path / "empty.mp4", 10.0):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_change_of_size_is_refused(tmp_path):
    with (
        pytest.raises(ValueError, match="after frames of 32x32"),
        VideoStream(tmp_path / "v.mp4", 10.0) as video,
    ):
        video.write(_frames(2))
        video.write(_frames(2, size=16))
    assert list(tmp_path.iterdir()) == []


def test_metadata_is_stored_in_the_container(tmp_path):
    with VideoStream(tmp_path / "tagged.mp4", 10.0, metadata={"comment": '{"seed": 3}'}) as video:
        video.write(_frames(3))
    with av.open(str(tmp_path / "tagged.mp4")) as container:
        assert container.metadata.get("comment") == '{"seed": 3}'


def test_write_sample_takes_pieces_in_time_order(tmp_path):
    video = torch.rand(3, 9, 16, 16)
    one = write_sample(video, tmp_path / "one", "clip", 8.0)
    pieces = write_sample(iter([video[:, :4], video[:, 4:4], video[:, 4:]]), tmp_path / "pieces", "clip", 8.0)
    assert np.array_equal(read_frames(one[0], range(9)), read_frames(pieces[0], range(9)))
    images = write_sample(iter([video[:, :2], video[:, 2:3]]), tmp_path, "frames", 8.0, images=True)
    assert [p.name for p in images] == ["0000.png", "0001.png", "0002.png"]
    still = write_sample(iter([video[:, :1]]), tmp_path, "still", 8.0)
    assert still == [tmp_path / "still.png"]
