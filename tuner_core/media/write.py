"""Writing videos with PyAV, atomically: a killed run leaves the old file or none, never half a video."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image


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
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        with av.open(str(temp), "w") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(100_000))
            stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
            if gop_size is not None:
                stream.codec_context.gop_size = gop_size
            if options:
                stream.options = dict(options)
            for pixels in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
            container.mux(stream.encode(None))
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


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
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp.png")
    try:
        Image.fromarray(frame).save(temp, format="PNG")
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


__all__ = ["pad_to_even", "to_uint8_frames", "write_image", "write_video"]
