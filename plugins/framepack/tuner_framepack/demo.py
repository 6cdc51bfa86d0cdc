"""``tuner demo --arch framepack``: a tiny FramePack kit, a generated dataset, and the four commands' options.

Nothing is downloaded. The models are the tiny random-weight stand-ins of :mod:`tuner_framepack.testing`,
saved in the published formats, so the demo runs the same loaders, caches, LoRA training and section-by-
section generation as the real models do, on a CPU, in a minute or two. The dataset is a handful of clips
of a coloured square crossing a grey background, each with a caption.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from tuner_core.media import write_image, write_video

#: The clips of the demo dataset: (colour name, also the file stem; RGB; direction (dx, dy)).
CLIPS: tuple[tuple[str, tuple[int, int, int], tuple[int, int]], ...] = (
    ("red", (220, 40, 40), (1, 0)),
    ("green", (40, 200, 60), (0, 1)),
    ("blue", (40, 80, 220), (-1, 0)),
    ("yellow", (230, 210, 40), (0, -1)),
    ("magenta", (210, 50, 200), (1, 1)),
)
DIRECTION_WORDS = {(1, 0): "right", (-1, 0): "left", (0, 1): "down", (0, -1): "up", (1, 1): "diagonally"}
#: 37 frames = one section of 9 latents (the default window) after the start latent.
CLIP_FRAMES = 37
FPS = 30
#: Height, width of every clip (multiples of the 16 px bucket step).
SIZE = (64, 96)
LORA_NAME = "framepack-demo-lora"
#: What ``tuner demo`` prints after its summary.
NOTES = (
    "The models are tiny random-weight stand-ins for FramePack's (nothing was downloaded), so the video "
    "shows noise-like colour and motion, not the square; the falling loss is the LoRA fitting the clips.",
    'For the real thing, download the models docs/framepack.md lists ("Model files") and run the same '
    "four commands on your dataset with --dit, --vae, --text_encoder1, --text_encoder2 and "
    '--image_encoder pointing at them (README.md, "The four commands", has GPU settings).',
)


@attrs.frozen
class DemoPlan:
    """How big the demo is: the full one ``tuner demo`` runs, or a quicker one with the same steps."""

    clips: int = len(CLIPS)
    train_steps: int = 40
    sections: int = 3
    window: int = 3
    infer_steps: int = 8


FULL = DemoPlan()
QUICK = DemoPlan(clips=2, train_steps=6, sections=2, window=2, infer_steps=2)


def moving_square(
    colour: tuple[int, int, int], direction: tuple[int, int], *, frames: int, size: tuple[int, int]
) -> np.ndarray:
    """uint8 ``(frames, height, width, 3)``: a square of ``colour`` crossing a grey background.

    The square starts near one side and moves ``direction`` (each of dx, dy in -1, 0, 1) at constant speed,
    so every clip is a simple, learnable motion.
    """
    height, width = size
    side = min(height, width) // 3
    video = np.full((frames, height, width, 3), 110, dtype=np.uint8)
    video[..., 2] = 130  # a slightly blue grey, so the colours stand out
    for t in range(frames):
        progress = t / max(frames - 1, 1) - 0.5  # -0.5 .. 0.5
        x = (width - side) // 2 + int(direction[0] * progress * (width - side))
        y = (height - side) // 2 + int(direction[1] * progress * (height - side))
        video[t, y : y + side, x : x + side] = colour
    return video


def write_dataset(directory: Path, clips: int) -> tuple[Path, Path, str]:
    """Write ``clips`` videos (at least one) with captions and a dataset TOML under ``directory``.

    :returns: the TOML, the first clip's first frame as a PNG (the generation's start image), its caption.
    """
    videos = directory / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    captions = []
    for name, colour, direction in CLIPS[: max(clips, 1)]:
        frames = moving_square(colour, direction, frames=CLIP_FRAMES, size=SIZE)
        captions.append(f"a {name} square moving {DIRECTION_WORDS[direction]} across a grey background")
        write_video(videos / f"{name}.mp4", frames, FPS)
        (videos / f"{name}.txt").write_text(captions[-1], encoding="utf-8")
    _, colour, direction = CLIPS[0]
    start = moving_square(colour, direction, frames=1, size=SIZE)[0]  # frame 0 of the first clip
    start_image = write_image(directory / "start.png", start)
    height, width = SIZE
    toml = directory / "dataset.toml"
    toml.write_text(
        "[general]\n"
        f"resolution = [{width}, {height}]\n"
        "caption_extension = '.txt'\n"
        "batch_size = 1\n\n"
        "[[datasets]]\n"
        # A JSON string is a TOML basic string: any path, quotes and backslashes included.
        f"video_directory = {json.dumps(str(videos))}\n"
        f"cache_directory = {json.dumps(str(directory / 'cache'))}\n"
        f"target_frames = [{CLIP_FRAMES}]\n"
        "frame_extraction = 'head'\n",
        encoding="utf-8",
    )
    return toml, start_image, captions[0]


@attrs.frozen
class DemoModels:
    """The tiny kit's files, as the options take them."""

    dit: Path
    vae: Path
    text_encoder1: Path
    text_encoder2: Path
    image_encoder: Path


def write_models(directory: Path) -> DemoModels:
    """Save the tiny random FramePack kit (DiT, VAE, LLaMA, CLIP-L, SigLIP, both tokenizers)."""
    from tuner_framepack.testing.tiny_dit import save_tiny_dit_diffusers
    from tuner_framepack.testing.tiny_encoders import (
        kit_dit_config,
        save_tiny_encoder_kit,
    )

    kit = save_tiny_encoder_kit(directory / "encoders")
    config = kit_dit_config()
    dit = save_tiny_dit_diffusers(directory / "FramePackI2V_HY", config=config)
    return DemoModels(
        dit=dit.shards[0],
        vae=kit.vae.diffusers_file,
        text_encoder1=kit.text_encoder1.first_shard,
        text_encoder2=kit.text_encoder2.diffusers_file,
        image_encoder=kit.image_encoder.redux_file,
    )


def demo_plan(directory: Path, plan: DemoPlan = FULL) -> dict[str, Mapping[str, Any]]:
    """Write the kit and the dataset under ``directory``; return each command's option values."""
    directory = Path(directory)
    models = write_models(directory / "models")
    dataset, start_image, caption = write_dataset(directory / "data", plan.clips)
    output = directory / "output"
    return {
        "cache-latents": {
            "dataset_config": dataset,
            "vae": models.vae,
            "image_encoder": models.image_encoder,
        },
        "cache-text": {
            "dataset_config": dataset,
            "text_encoder1": models.text_encoder1,
            "text_encoder2": models.text_encoder2,
        },
        "train": {
            "dataset_config": dataset,
            "dit": models.dit,
            "output_dir": output,
            "output_name": LORA_NAME,
            "network_module": "lora",
            "network_dim": 8,
            "network_alpha": 8,
            "learning_rate": 5e-3,
            "max_train_steps": plan.train_steps,
            "timestep_sampling": "shift",
            "discrete_flow_shift": 3.0,
            "seed": 42,
            "max_data_loader_n_workers": 0,
        },
        "generate": {
            "dit": models.dit,
            "vae": models.vae,
            "text_encoder1": models.text_encoder1,
            "text_encoder2": models.text_encoder2,
            "image_encoder": models.image_encoder,
            # train's final save is {output_dir}/{output_name}.safetensors
            "lora_weight": [output / f"{LORA_NAME}.safetensors"],
            "image_path": str(start_image),
            "prompt": caption,
            "video_size": list(SIZE),
            "video_sections": plan.sections,
            "latent_window_size": plan.window,
            "infer_steps": plan.infer_steps,
            "seed": 42,
            "save_path": directory / "generated",
        },
    }
