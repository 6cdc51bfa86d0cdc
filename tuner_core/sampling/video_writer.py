"""Write generated videos and frames to disk, atomically."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """Pixels in [0, 1] shaped (C, F, H, W) -> uint8 (F, H, W, C)."""
    return (
        (video.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()
    )


def _even(frames: np.ndarray) -> np.ndarray:
    # yuv420p needs even sizes; repeat the last row/column rather than lose pixels.
    h, w = frames.shape[1:3]
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_video(path: Path, frames: np.ndarray, fps: float, crf: int = 16) -> Path:
    """Encode uint8 (F, H, W, 3) frames as H.264 (MPEG-4 part 2 where libx264 is missing) into ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    frames = _even(frames)
    try:
        with av.open(str(temp), mode="w", format="mp4") as container:
            try:
                stream = container.add_stream("libx264", rate=round(fps), options={"crf": str(crf)})
            except (av.error.FFmpegError, ValueError):  # build without libx264
                stream = container.add_stream("mpeg4", rate=round(fps))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def write_image(path: Path, frame: np.ndarray) -> Path:
    """Save one uint8 (H, W, 3) frame as PNG, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    try:
        Image.fromarray(frame).save(temp, format="PNG")
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path
