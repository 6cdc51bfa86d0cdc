"""``tuner demo``: FramePack by default, end to end on the tiny kit, through the console entry point.

The test runs ``--quick`` (2 clips, 6 steps, 2 sections of 2 latents): the same code path as the full demo,
small enough for CI.
"""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
from PIL import Image
from safetensors import safe_open

from tuner_cli.main import main
from tuner_framepack.demo import CLIP_FRAMES, LORA_NAME, QUICK, SIZE, moving_square


def test_tuner_demo_runs_framepack_and_says_where_everything_went(tmp_path, capsys):
    assert main(["demo", "--quick", "--output_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tuner demo (--arch framepack --quick)" in out
    summary = out.split("What the demo made:", 1)[1]
    shown = dict(re.findall(r"^  (\w[\w ]*?) +(/\S+)$", summary, flags=re.MULTILINE))
    video, weights, plot = (Path(shown[k]) for k in ("video", "weights", "loss plot"))
    assert weights == tmp_path / "output" / f"{LORA_NAME}.safetensors"
    assert shown["dataset"] == str(tmp_path / "data" / "dataset.toml")
    assert "random-weight stand-ins" in summary and "docs/framepack.md" in summary

    # The commands' equivalents are printed, with paths relative to the demo directory.
    assert "== tuner train --arch framepack --dataset_config data/dataset.toml" in out
    assert "--lora_weight output/framepack-demo-lora.safetensors --image_path data/start.png" in out

    with safe_open(str(weights), "pt") as handle:
        assert any(k.startswith("lora_unet_transformer_blocks_0_") for k in handle.keys())  # noqa: SIM118
    assert Image.open(plot).format == "PNG"
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == QUICK.sections * QUICK.window * 4 + 1
    assert frames[0].shape == (*SIZE, 3)

    loss = re.search(r"loss +(\S+) at the first step, (\S+) at step (\d+)", summary)
    first, last, steps = float(loss[1]), float(loss[2]), int(loss[3])
    assert steps == QUICK.train_steps
    assert last < first  # a fixed seed: the LoRA fits the clips from the first steps


def test_demo_dataset_is_moving_squares_with_captions_and_the_start_image(tmp_path):
    from tuner_framepack.demo import write_dataset

    toml, start, caption = write_dataset(tmp_path, clips=2)
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == [
        "green.mp4",
        "green.txt",
        "red.mp4",
        "red.txt",
    ]
    assert (
        caption
        == (tmp_path / "videos" / "red.txt").read_text()
        == ("a red square moving right across a grey background")
    )
    with av.open(str(tmp_path / "videos" / "red.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == CLIP_FRAMES
    start_pixels = np.asarray(Image.open(start).convert("RGB"))
    assert np.array_equal(start_pixels, moving_square((220, 40, 40), (1, 0), frames=1, size=SIZE)[0])
    red = (frames[0][..., 0] > 180) & (frames[0][..., 1] < 90)
    later = (frames[-1][..., 0] > 180) & (frames[-1][..., 1] < 90)
    assert np.argwhere(later)[:, 1].mean() > np.argwhere(red)[:, 1].mean() + 30  # it moved right
    assert "target_frames = [37]" in toml.read_text()
