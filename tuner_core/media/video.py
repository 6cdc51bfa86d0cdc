"""Reading videos: files through PyAV, and directories of frame images treated as videos.

Frames are numbered in presentation order from 0, as a full decode would number them. Reading asks for
a set of frame numbers and decodes only as far as the last one; when the first wanted frame lies deep in
the file, the reader seeks to the key frame before it instead of decoding from the start. Each wanted
frame is handed to a ``transform`` (usually the resize to the bucket) as soon as it is decoded, so a long
video never sits in memory at full size. Failures become :class:`~tuner_core.errors.DataError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import attrs
import av
import numpy as np

from tuner_core.errors import DataError
from tuner_core.media.image import image_size, is_image_file, load_image

#: Video file extensions (lower case) read as videos.
VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4",
    ".webm",
    ".avi",
    ".mkv",
    ".mov",
    ".flv",
    ".wmv",
    ".m4v",
    ".mpg",
    ".mpeg",
)

#: Seek only when the first wanted frame is at least this far in: below that, decoding from the start
#: costs no more than building the frame index that exact seeking needs.
SEEK_MIN_FRAMES = 24

Transform = Callable[[np.ndarray], np.ndarray]

# What PyAV and the OS raise for unreadable media.
_AV_ERRORS = (av.error.FFmpegError, OSError, ValueError, IndexError, EOFError)


def is_video_file(path: Path) -> bool:
    """Whether ``path`` has a video extension (case-insensitive)."""
    return path.suffix.lower() in VIDEO_EXTENSIONS


@attrs.frozen
class VideoInfo:
    """What probing a video found.

    :param frame_count: number of frames (before any frame-rate resampling).
    :param fps: frame rate from the container, or ``None`` (frame directories, or unknown).
    :param size: ``(width, height)`` of the first frame.
    """

    frame_count: int
    fps: float | None
    size: tuple[int, int]


def frame_files(directory: Path) -> list[Path]:
    """The image files of a frame directory, in name order (the frame order).

    :raises DataError: if the directory cannot be listed.
    """
    try:
        with os.scandir(directory) as entries:
            names = sorted(e.name for e in entries if not e.name.startswith(".") and e.is_file())
    except OSError as exc:
        raise DataError(f"{directory}: cannot list the frame directory: {exc.strerror or exc}") from exc
    return [directory / n for n in names if is_image_file(Path(n))]


def _open(path: Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    try:
        container = av.open(str(path))
    except _AV_ERRORS as exc:
        raise DataError(f"{path}: cannot open the video ({_reason(exc)}); it is empty or corrupt") from exc
    if not container.streams.video:
        container.close()
        raise DataError(f"{path}: has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc).strip() or type(exc).__name__


def _packet_count(path: Path) -> int:
    container, stream = _open(path)
    try:
        return sum(1 for packet in container.demux(stream) if packet.size)
    except _AV_ERRORS as exc:
        raise DataError(f"{path}: cannot read the video ({_reason(exc)})") from exc
    finally:
        container.close()


def count_frames(path: Path) -> int:
    """Number of frames of a video file or frame directory (container metadata, else a demux count).

    :raises DataError: if it cannot be read.
    """
    if path.is_dir():
        return len(frame_files(path))
    container, stream = _open(path)
    frames = stream.frames
    container.close()
    return frames if frames > 0 else _packet_count(path)


def probe_video(path: Path) -> VideoInfo:
    """Frame count, frame rate and frame size of a video file or frame directory.

    The first frame is decoded, so a file whose frames cannot be decoded fails here.

    :raises DataError: for a missing, empty, corrupt or frameless video.
    """
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise DataError(f"{path}: the frame directory holds no images")
        return VideoInfo(frame_count=len(files), fps=None, size=image_size(files[0]))
    container, stream = _open(path)
    try:
        # read the stream's fields before closing: they live in the container's memory
        rate = stream.average_rate or stream.guessed_rate
        frames = stream.frames
        first = next(iter(container.decode(stream)), None)
    except _AV_ERRORS as exc:
        raise DataError(f"{path}: cannot decode the video ({_reason(exc)})") from exc
    finally:
        container.close()
    if first is None:
        raise DataError(f"{path}: the video has no frames")
    if frames <= 0:
        frames = _packet_count(path)
    return VideoInfo(frame_count=frames, fps=float(rate) if rate else None, size=(first.width, first.height))


class _SeekMissed(Exception):
    """Seeking landed somewhere the frame index cannot place; decode from the start instead."""


class VideoReader:
    """Reads chosen frames of one video file or frame directory.

    :ivar frames_decoded: frames decoded (or frame images read) so far, for diagnostics and tests.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.frames_decoded = 0

    def read(self, frames: Sequence[int], transform: Transform | None = None) -> list[np.ndarray]:
        """Frames with the given numbers (any order, repeats allowed), each passed through ``transform``.

        Frames are RGB ``(H, W, 3)`` uint8 before the transform.

        :raises DataError: if the video cannot be decoded or is shorter than a wanted frame number.
        """
        if not frames:
            return []
        if min(frames) < 0:
            raise ValueError(f"frame numbers must not be negative, got {min(frames)}")
        wanted = sorted(set(frames))
        keep = transform or (lambda pixels: pixels)
        if self.path.is_dir():
            found = self._read_directory(wanted, keep)
        else:
            found = self._read_file(wanted, keep)
        return [found[i] for i in frames]

    def _read_directory(self, wanted: list[int], keep: Transform) -> dict[int, np.ndarray]:
        files = frame_files(self.path)
        if wanted[-1] >= len(files):
            raise DataError(
                f"{self.path}: has {len(files)} frame images, frame {wanted[-1]} was asked for; "
                "the directory changed since the dataset was listed"
            )
        found = {}
        for index in wanted:
            found[index] = keep(load_image(files[index]))
            self.frames_decoded += 1
        return found

    def _read_file(self, wanted: list[int], keep: Transform) -> dict[int, np.ndarray]:
        container, stream = _open(self.path)
        try:
            if wanted[0] >= SEEK_MIN_FRAMES:
                try:
                    return self._decode(
                        container, stream, wanted, keep, self._seek(container, stream, wanted[0])
                    )
                except _SeekMissed:
                    container.seek(0)
            return self._decode(container, stream, wanted, keep, None)
        except _AV_ERRORS as exc:
            raise DataError(f"{self.path}: cannot decode the video ({_reason(exc)})") from exc
        finally:
            container.close()

    @staticmethod
    def _seek(container, stream, first: int) -> dict[int, int] | None:
        """Seek to the key frame at or before frame ``first``; return the pts -> frame number index.

        The index comes from the presentation times of all packets (a demux pass, which decodes nothing),
        so it is exact for variable frame rates and reordered (B-) frames. ``None`` when the file has
        packets without times or fewer frames than ``first``: then decoding starts at the beginning.
        """
        times = []
        for packet in container.demux(stream):
            if packet.size:
                if packet.pts is None:
                    container.seek(0)
                    return None
                times.append(packet.pts)
        times.sort()
        if first >= len(times):
            container.seek(0)
            return None
        container.seek(times[first], stream=stream, backward=True, any_frame=False)
        return {pts: number for number, pts in enumerate(times)}

    def _decode(
        self, container, stream, wanted: list[int], keep: Transform, pts_index: dict[int, int] | None
    ) -> dict[int, np.ndarray]:
        wanted_set = set(wanted)
        last = wanted[-1]
        found: dict[int, np.ndarray] = {}
        number = -1
        for frame in container.decode(stream):
            self.frames_decoded += 1
            if pts_index is None:
                number += 1
            else:
                placed = pts_index.get(frame.pts)
                if placed is None or (number < 0 and placed > wanted[0]):
                    raise _SeekMissed
                number = placed
            if number in wanted_set:
                found[number] = keep(frame.to_ndarray(format="rgb24"))
            if number >= last:
                break
        missing = wanted_set - found.keys()
        if missing:
            raise DataError(
                f"{self.path}: decoded {number + 1} frames, frame {min(missing)} was asked for; "
                "the video is truncated or changed since the dataset was listed"
            )
        return found


def read_frames(path: Path, frames: Iterable[int], transform: Transform | None = None) -> np.ndarray:
    """Frames ``frames`` of a video file or frame directory, transformed and stacked to ``(F, H, W, C)``.

    :raises DataError: as :meth:`VideoReader.read`.
    """
    return np.stack(VideoReader(path).read(list(frames), transform))


__all__ = [
    "SEEK_MIN_FRAMES",
    "VIDEO_EXTENSIONS",
    "VideoInfo",
    "VideoReader",
    "count_frames",
    "frame_files",
    "is_video_file",
    "probe_video",
    "read_frames",
]
