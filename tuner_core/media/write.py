"""Writing videos (PyAV) and images (Pillow) atomically: a killed run leaves the old file or none, never half."""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from tuner_core.atomic import atomic_write


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
    """Encode ``(F, H, W, 3)`` uint8 RGB frames into ``path`` (container chosen by its extension).

    The video is written to a temporary file beside ``path`` and renamed over it when complete.

    :param fps: frame rate stored in the file.
    :param codec: an encoder PyAV was built with (``libx264``, ``mpeg4``, ``libvpx``, ...).
    :param pix_fmt: pixel format of the encoded stream (``yuv420p`` needs even width and height).
    :param options: encoder options (``{"crf": "18"}``).
    :param gop_size: frames between key frames (encoder default when ``None``).
    :returns: ``path``.
    :raises ValueError: for frames that are not ``(F, H, W, 3)`` uint8, or odd sizes with ``yuv420p``.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(
            f"frames must be a non-empty (F, H, W, 3) uint8 array, got {frames.dtype} {frames.shape}"
        )
    height, width = frames.shape[1:3]
    if pix_fmt == "yuv420p" and (width % 2 or height % 2):
        raise ValueError(f"{path}: yuv420p needs an even width and height, got {width}x{height}")
    with (
        atomic_write(path) as temp,
        av.open(str(temp), "w", format=_container_format(path)) as container,
    ):
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(100_000))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if gop_size is not None:
            stream.codec_context.gop_size = gop_size
        if options:
            stream.options = dict(options)
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode(None))
    return path


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
    return np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def write_image(path: Path, frame: np.ndarray) -> Path:
    """Save one uint8 (H, W, 3) frame as PNG, atomically."""
    path = Path(path)
    with atomic_write(path) as temp:
        Image.fromarray(frame).save(temp, format="PNG")
    return path


def write_sample(
    video: torch.Tensor, directory: Path, stem: str, fps: float, *, images: bool = False
) -> list[Path]:
    """Write a generated ``(C, F, H, W)`` video with pixels in [0, 1] under ``directory``; return the files.

    Several frames become ``<stem>.mp4`` (H.264 at crf 16, padded to an even size) and a single frame
    ``<stem>.png``; with ``images``, every frame is a PNG in ``<stem>/`` (``0000.png``, ``0001.png``, ...).
    """
    directory = Path(directory)
    frames = to_uint8_frames(video)
    if images:
        return [write_image(directory / stem / f"{i:04d}.png", frame) for i, frame in enumerate(frames)]
    if len(frames) == 1:
        return [write_image(directory / f"{stem}.png", frames[0])]
    return [write_video(directory / f"{stem}.mp4", pad_to_even(frames), fps, options={"crf": "16"})]


__all__ = ["pad_to_even", "to_uint8_frames", "write_image", "write_sample", "write_video"]
