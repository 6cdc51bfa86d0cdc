"""Writing videos (PyAV) and images (Pillow) atomically: a killed run leaves the old file or none, never half.

Videos can be written run by run of frames (:class:`VideoStream`), so a generator of any length never holds
the whole pixel video in memory.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np
import torch
from PIL import Image, PngImagePlugin

from tuner_core.atomic import atomic_write


class VideoStream:
    """A video file written in pieces: ``with VideoStream(path, fps) as video: video.write(frames)``.

    Frames go to a temporary file beside ``path``, which replaces ``path`` only when the ``with`` block
    ends without an error; on an error (Ctrl-C included) nothing is left at ``path``.

    :param fps: frame rate stored in the file.
    :param codec: an encoder PyAV was built with (``libx264``, ``mpeg4``, ``libvpx``, ...).
    :param pix_fmt: pixel format of the encoded stream (``yuv420p`` needs even width and height).
    :param options: encoder options (``{"crf": "18"}``).
    :param gop_size: frames between key frames (encoder default when ``None``).
    :param metadata: container tags (``{"comment": "..."}``), where the container keeps them.
    :param pad_odd: repeat the last row / column of odd-sized frames instead of refusing them.
    """

    def __init__(
        self,
        path: Path,
        fps: float,
        *,
        codec: str = "libx264",
        pix_fmt: str = "yuv420p",
        options: Mapping[str, str] | None = None,
        gop_size: int | None = None,
        metadata: Mapping[str, str] | None = None,
        pad_odd: bool = False,
    ) -> None:
        self.path, self.fps, self.codec, self.pix_fmt = Path(path), fps, codec, pix_fmt
        self.options, self.gop_size, self.metadata = dict(options or {}), gop_size, dict(metadata or {})
        self.pad_odd = pad_odd
        self.frames_written = 0
        self._exit = contextlib.ExitStack()
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None

    def __enter__(self) -> VideoStream:
        temp = self._exit.enter_context(atomic_write(self.path))
        self._container = self._exit.enter_context(
            av.open(str(temp), "w", format=_container_format(self.path))
        )
        self._container.metadata.update(self.metadata)
        return self

    def write(self, frames: np.ndarray) -> None:
        """Encode ``(F, H, W, 3)`` uint8 RGB frames; every call after the first must keep the size."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be a (F, H, W, 3) uint8 array, got {frames.dtype} {frames.shape}")
        if self.pad_odd:
            frames = pad_to_even(frames)
        if self._container is None:
            raise RuntimeError("VideoStream.write() outside its `with` block")
        if self._stream is None:
            self._stream = self._open_stream(*frames.shape[1:3])
        elif (self._stream.height, self._stream.width) != frames.shape[1:3]:
            raise ValueError(
                f"{self.path}: frames of {frames.shape[2]}x{frames.shape[1]} after frames of "
                f"{self._stream.width}x{self._stream.height}"
            )
        for pixels in frames:
            self._container.mux(self._stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        self.frames_written += len(frames)

    def _open_stream(self, height: int, width: int) -> av.video.stream.VideoStream:
        if self.pix_fmt == "yuv420p" and (width % 2 or height % 2):
            raise ValueError(f"{self.path}: yuv420p needs an even width and height, got {width}x{height}")
        stream = self._container.add_stream(self.codec, rate=Fraction(self.fps).limit_denominator(100_000))
        stream.width, stream.height, stream.pix_fmt = width, height, self.pix_fmt
        if self.gop_size is not None:
            stream.codec_context.gop_size = self.gop_size
        if self.options:
            stream.options = self.options
        return stream

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None and self._stream is None:
            error = ValueError(f"{self.path}: no frames were written")
            kind, trace = ValueError, None
        if kind is None:
            self._container.mux(self._stream.encode(None))  # flush the encoder's delayed frames
        self._container = None
        if not self._exit.__exit__(kind, error, trace) and error is not None:
            raise error


def write_video(
    path: Path,
    frames: np.ndarray,
    fps: float,
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: Mapping[str, str] | None = None,
    gop_size: int | None = None,
) -> Path:
    """Encode ``(F, H, W, 3)`` uint8 RGB frames into ``path`` (container chosen by its extension), atomically.

    The parameters are :class:`VideoStream`'s.

    :returns: ``path``.
    :raises ValueError: for frames that are not ``(F, H, W, 3)`` uint8, or odd sizes with ``yuv420p``.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or len(frames) == 0:
        raise ValueError(
            f"frames must be a non-empty (F, H, W, 3) uint8 array, got {frames.dtype} {frames.shape}"
        )
    with VideoStream(path, fps, codec=codec, pix_fmt=pix_fmt, options=options, gop_size=gop_size) as video:
        video.write(frames)
    return Path(path)


def _container_format(path: Path) -> str:
    """The muxer FFmpeg picks for ``path``'s extension (the temporary name has none to pick it by).

    Opening for writing only names the file; PyAV opens it when the first packet is muxed, so this writes
    nothing.
    """
    with av.open(str(path), "w") as probe:
        return probe.format.name


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """Pixels in [0, 1] shaped (C, F, H, W) -> uint8 (F, H, W, C)."""
    return (
        (video.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()
    )


def pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Repeat the last row / column where needed so ``yuv420p`` can encode the frames."""
    height, width = frames.shape[1:3]
    if not (height % 2 or width % 2):
        return frames
    return np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def write_image(path: Path, frame: np.ndarray, *, metadata: Mapping[str, str] | None = None) -> Path:
    """Save one uint8 (H, W, 3) frame as PNG, atomically, with ``metadata`` as PNG text chunks."""
    path = Path(path)
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(key, value)
    with atomic_write(path) as temp:
        Image.fromarray(frame).save(temp, format="PNG", pnginfo=info)
    return path


class SampleWriter:
    """Writes a generated video from its pixel runs, each encoded as it arrives (``writer(piece)``).

    Use it as ``with SampleWriter(directory, stem, fps) as writer: decode(sink=writer)``; :attr:`paths`
    then lists the files. Several frames become ``<stem>.mp4`` (H.264 at crf 16, padded to an even size)
    and a single frame ``<stem>.png``; with ``images``, every frame is a PNG in ``<stem>/`` (``0000.png``,
    ...). Each file appears at its final path only when complete.

    :param metadata: written into the video container (as a JSON ``comment``) or the PNGs' text chunks.
    """

    def __init__(
        self,
        directory: Path,
        stem: str,
        fps: float,
        *,
        images: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.directory, self.stem, self.fps, self.images = Path(directory), stem, fps, images
        self.metadata = dict(metadata or {})
        self.paths: list[Path] = []
        self._held: np.ndarray | None = None  # a first lone frame: a still image, unless more follow
        self._video: VideoStream | None = None

    def __enter__(self) -> SampleWriter:
        return self

    def __call__(self, piece: torch.Tensor) -> None:
        """Take the next ``(C, F, H, W)`` run of frames with pixels in [0, 1]."""
        if piece.shape[1] == 0:
            return
        frames = to_uint8_frames(piece)
        if self.images:
            for frame in frames:
                name = self.directory / self.stem / f"{len(self.paths):04d}.png"
                self.paths.append(write_image(name, frame, metadata=self.metadata))
            return
        if self._video is None and self._held is None and len(frames) == 1:
            self._held = frames
            return
        if self._video is None:
            comment = {"comment": json.dumps(self.metadata)} if self.metadata else {}
            path = self.directory / f"{self.stem}.mp4"
            self._video = VideoStream(path, self.fps, options={"crf": "16"}, metadata=comment, pad_odd=True)
            self._video.__enter__()
            if self._held is not None:
                self._video.write(self._held)
                self._held = None
        self._video.write(frames)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._video is not None:
            self._video.__exit__(kind, error, trace)
            if kind is None:
                self.paths.append(self._video.path)
        elif kind is None and self._held is not None:
            self.paths.append(
                write_image(self.directory / f"{self.stem}.png", self._held[0], metadata=self.metadata)
            )
        elif kind is None and not self.paths:
            raise ValueError(f"{self.stem}: the generated video has no frames")


def write_sample(
    video: torch.Tensor | Iterable[torch.Tensor],
    directory: Path,
    stem: str,
    fps: float,
    *,
    images: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write a generated video with pixels in [0, 1] under ``directory`` (see :class:`SampleWriter`).

    :param video: a ``(C, F, H, W)`` tensor, or such pieces in time order.
    :returns: the written files.
    """
    with SampleWriter(directory, stem, fps, images=images, metadata=metadata) as writer:
        for piece in [video] if isinstance(video, torch.Tensor) else video:
            writer(piece)
    return writer.paths


__all__ = [
    "SampleWriter",
    "VideoStream",
    "pad_to_even",
    "to_uint8_frames",
    "write_image",
    "write_sample",
    "write_video",
]
