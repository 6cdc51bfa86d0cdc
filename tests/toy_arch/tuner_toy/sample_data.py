"""A generated sample dataset: short videos of coloured squares moving in a direction, with captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tuner_core.media import write_video

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def square_video(
    colour: tuple[int, int, int], direction: tuple[int, int], *, frames: int, size: int
) -> np.ndarray:
    """uint8 (frames, size, size, 3): a square crossing a grey background."""
    video = np.full((frames, size, size, 3), 96, dtype=np.uint8)
    side = size // 4
    for t in range(frames):
        offset = int((t / max(frames - 1, 1) - 0.5) * (size - side))
        x = size // 2 - side // 2 + direction[0] * offset
        y = size // 2 - side // 2 + direction[1] * offset
        video[t, max(y, 0) : y + side, max(x, 0) : x + side] = colour
    return video


def make_sample_dataset(
    directory: Path, *, videos: int = 8, frames: int = 17, size: int = 64, fps: int = 16
) -> Path:
    """Write ``videos`` clips with caption files and a dataset TOML into ``directory``; return the TOML."""
    media = directory / "videos"
    media.mkdir(parents=True, exist_ok=True)
    names = [(c, d) for c in COLOURS for d in DIRECTIONS]
    for index in range(videos):
        colour, direction = names[index % len(names)]
        stem = f"{colour}_{direction}_{index:02d}"
        write_video(
            media / f"{stem}.mp4",
            square_video(COLOURS[colour], DIRECTIONS[direction], frames=frames, size=size),
            fps,
        )
        (media / f"{stem}.txt").write_text(f"a {colour} square moving {direction}", encoding="utf-8")
    toml = directory / "dataset.toml"
    toml.write_text(
        "[general]\n"
        f"resolution = [{size}, {size}]\n"
        'caption_extension = ".txt"\n'
        "batch_size = 2\n\n"
        "[[datasets]]\n"
        f"video_directory = '{media}'\n"
        f"cache_directory = '{directory / 'cache'}'\n"
        f"target_frames = [{frames}]\n"
        'frame_extraction = "head"\n',
        encoding="utf-8",
    )
    return toml
