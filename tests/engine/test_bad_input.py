"""Bad media while caching and Ctrl-C while training: reported, skipped, nothing half-written."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tuner_core import DataError
from tuner_core.media.write import write_video
from tuner_toy.sample_data import square_video

from .helpers import cache_all, run, train_values


def test_bad_videos_are_reported_once_and_skipped(toy, caplog):
    videos = toy.root / "videos"
    (videos / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    (videos / "corrupt.txt").write_text("a broken clip")
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "empty.txt").write_text("nothing")
    write_video(videos / "short.mp4", square_video((255, 0, 0), (1, 0), frames=3, size=32), 16)
    (videos / "short.txt").write_text("too short")
    write_video(videos / "nocaption.mp4", square_video((255, 0, 0), (1, 0), frames=9, size=32), 16)
    result = run("cache-latents", {"dataset_config": toy.dataset, "vae": toy.vae})
    assert result.counts["encoded"] == 6
    assert result.counts["skipped"] == 4
    for name in ("corrupt.mp4", "empty.mp4", "short.mp4", "nocaption"):
        assert caplog.text.count(name) >= 1, name
    assert "5" in caplog.text  # the minimum clip length is stated


def test_images_the_decoder_rejects_are_skipped(tmp_path, caplog):
    from tuner_toy.build import make_toy_models

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(images / "good.png")
    (images / "good.txt").write_text("grey")
    (images / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (images / "bad.txt").write_text("broken")
    dataset = tmp_path / "dataset.toml"
    dataset.write_text(f"[general]\nresolution = 32\n[[datasets]]\nimage_directory = '{images}'\n")
    files = make_toy_models(tmp_path / "models")
    result = run("cache-latents", {"dataset_config": dataset, "vae": files.vae})
    assert result.counts["encoded"] == 1 and result.counts["skipped"] == 1
    assert "bad.png" in caplog.text


def test_a_dataset_left_with_nothing_is_a_clear_error(tmp_path):
    from tuner_toy.build import make_toy_models

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "broken.mp4").write_bytes(b"nope")
    (videos / "broken.txt").write_text("x")
    dataset = tmp_path / "dataset.toml"
    dataset.write_text(f"[[datasets]]\nvideo_directory = '{videos}'\ntarget_frames = [9]\n")
    files = make_toy_models(tmp_path / "models")
    with pytest.raises(DataError, match="broken.mp4"):
        run("cache-latents", {"dataset_config": dataset, "vae": files.vae})


def test_ctrl_c_during_training_leaves_only_complete_files(toy, tmp_path, monkeypatch):
    cache_all(toy)
    from tuner_core import hookimpl, make_plugin_manager

    class Interrupt:
        @hookimpl
        def tuner_on_step_end(self, step):
            if step == 3:
                raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(
            "train",
            train_values(toy, out, max_train_steps=6, save_every_n_steps=2, save_state=True),
            make_plugin_manager(plugins=[Interrupt()]),
        )
    names = sorted(p.name for p in out.iterdir())
    assert names == ["last-step00000002-state", "last-step00000002.safetensors"]


def test_cli_reports_interrupt_with_exit_code_130(toy, tmp_path, monkeypatch, capsys):
    from tuner_cli import main as cli_main
    from tuner_core.commands import run as run_module

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setitem(run_module.RUNNERS, "train", interrupted)
    code = cli_main.main(
        [
            "train",
            "--arch",
            "toy",
            "--dataset_config",
            str(toy.dataset),
            "--dit",
            str(toy.dit),
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert code == 130 and "interrupted" in capsys.readouterr().err
