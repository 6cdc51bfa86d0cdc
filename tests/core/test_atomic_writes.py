"""Every file tuner writes goes through ``tuner_core.atomic.atomic_write``: all or nothing, ``open()``'s mode."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from tuner_core import atomic
from tuner_core.atomic import FILE_MODE, TEMP_SUFFIX, atomic_write, temp_path
from tuner_core.cache.store import atomic_write_safetensors, remove_temp_files
from tuner_core.media.write import write_image, write_sample, write_video
from tuner_core.training.loss_plot import write_loss_plot
from tuner_core.training.saved_files import save_weights
from tuner_core.weights import save_json, save_safetensors, save_sharded_safetensors


def _frames(value: int, count: int = 3) -> np.ndarray:
    return np.full((count, 16, 16, 3), value, np.uint8)


#: Each writer as ``(file name, write(path, version))``; versions give different content.
WRITERS = {
    "atomic_write_safetensors": (
        "a.safetensors",
        lambda p, v: atomic_write_safetensors(p, {"x": torch.full((4,), float(v))}, {"v": str(v)}),
    ),
    "save_safetensors": (
        "b.safetensors",
        lambda p, v: save_safetensors({"x": torch.full((4,), float(v))}, p),
    ),
    "save_weights": (
        "c.safetensors",
        lambda p, v: save_weights(p, {"x": torch.full((4,), float(v))}, {}, "bf16"),
    ),
    "save_json": ("d.json", lambda p, v: save_json({"v": v}, p)),
    "write_video": ("e.mp4", lambda p, v: write_video(p, _frames(40 * v), 8.0)),
    "write_image": ("f.png", lambda p, v: write_image(p, _frames(40 * v)[0])),
    "write_loss_plot": ("g.png", lambda p, v: write_loss_plot(p, [1.0, float(v)])),
}


def _open_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def test_file_mode_is_what_open_would_give():
    assert _open_mode() == FILE_MODE


def test_temp_files_are_hidden_beside_the_target_and_found_by_the_cleanup(tmp_path):
    temp = temp_path(tmp_path / "item.safetensors")
    assert temp.parent == tmp_path and temp.name.startswith(".") and temp.name.endswith(TEMP_SUFFIX)
    assert not temp.name.endswith(".safetensors")  # no glob of finished files picks it up
    assert temp != temp_path(tmp_path / "item.safetensors")  # two writers of one target never collide
    temp.write_bytes(b"left by a killed run")
    os.utime(temp, (0, 0))
    assert remove_temp_files(tmp_path) == 1


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_a_writer_failing_midway_leaves_the_old_file_and_no_temp(tmp_path, error):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old")
    with pytest.raises(error), atomic_write(path) as temp:
        temp.write_bytes(b"half of the new")
        raise error
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_a_new_file_appears_complete_with_its_parents(tmp_path):
    path = tmp_path / "new" / "dir" / "data.bin"
    with atomic_write(path) as temp:
        temp.write_bytes(b"new")
        assert not path.exists()  # nothing at the target until the write is complete
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == _open_mode()


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_each_writer_is_atomic_with_open_mode(tmp_path, monkeypatch, writer):
    name, write = WRITERS[writer]
    path = tmp_path / name
    write(path, 1)
    assert stat.S_IMODE(path.stat().st_mode) == _open_mode()  # safetensors alone would give 0600
    before = path.read_bytes()

    def interrupted(fd: int) -> None:  # Ctrl-C once the new content is in the temporary file
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write(path, 2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [name]


def _recording(monkeypatch) -> list[Path]:
    """Record the target of every write that goes through ``atomic_write``."""
    targets: list[Path] = []
    real = atomic.temp_path

    def recorded(path: Path, suffix: str = TEMP_SUFFIX) -> Path:
        targets.append(path)
        return real(path, suffix)

    monkeypatch.setattr(atomic, "temp_path", recorded)
    return targets


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_each_writer_goes_through_atomic_write(tmp_path, monkeypatch, writer):
    name, write = WRITERS[writer]
    targets = _recording(monkeypatch)
    write(tmp_path / name, 1)
    assert targets == [tmp_path / name]


def test_shards_samples_and_image_directories_go_through_atomic_write(tmp_path, monkeypatch):
    targets = _recording(monkeypatch)
    tensors = {f"t{i}": torch.zeros(8) for i in range(3)}
    shards, index = save_sharded_safetensors(tensors, tmp_path / "sharded", num_shards=3)
    assert targets == [*shards, index]
    assert json.loads(index.read_text())["metadata"]["total_size"] == 96

    targets.clear()
    video = torch.rand(3, 5, 15, 17)  # (C, F, H, W), odd size: padded for yuv420p
    assert write_sample(video, tmp_path, "clip", 8.0) == targets == [tmp_path / "clip.mp4"]
    targets.clear()
    assert write_sample(video[:, :1], tmp_path, "still", 8.0) == targets == [tmp_path / "still.png"]
    targets.clear()
    written = write_sample(video[:, :2], tmp_path, "frames", 8.0, images=True)
    assert written == targets == [tmp_path / "frames" / "0000.png", tmp_path / "frames" / "0001.png"]
