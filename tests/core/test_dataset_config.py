"""The dataset TOML: valid files parse with the right precedence; invalid ones name file, table and key."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import attrs
import pytest

from tuner_core import ConfigError, load_dataset_config, option


@attrs.frozen(kw_only=True)
class ArchKeys:
    fp_latent_window_size: int | None = option(None, help="window")


@pytest.fixture
def media(tmp_path: Path) -> Path:
    for name in ("videos", "images", "videos2"):
        (tmp_path / name).mkdir()
    return tmp_path


def write(tmp_path: Path, text: str, name: str = "dataset.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_valid_config_merges_general_into_datasets(media):
    path = write(
        media,
        f"""
        [general]
        resolution = [640, 480]
        caption_extension = ".txt"
        batch_size = 2
        enable_bucket = true

        [[datasets]]
        video_directory = "{media / "videos"}"
        cache_directory = "{media / "cache"}"
        target_frames = [1, 25, 45]
        frame_extraction = "full"
        max_frames = 145
        fp_latent_window_size = 5

        [[datasets]]
        image_directory = "{media / "images"}"
        resolution = 512
        batch_size = 4
        """,
    )
    config = load_dataset_config(path, ArchKeys)
    video, image = config.datasets
    assert video.is_video and not image.is_video
    assert video.resolution == (640, 480) and video.keys.batch_size == 2 and video.keys.enable_bucket
    assert video.keys.target_frames == [1, 25, 45] and video.keys.frame_extraction == "full"
    assert video.extra.fp_latent_window_size == 5
    assert video.cache_directory == media / "cache"
    assert image.resolution == (512, 512) and image.keys.batch_size == 4
    assert image.cache_directory == media / "images"  # defaults to the media directory
    assert image.extra.fp_latent_window_size is None


def test_json_config(media):
    path = media / "dataset.json"
    path.write_text(json.dumps({"datasets": [{"video_directory": str(media / "videos")}]}))
    assert load_dataset_config(path).datasets[0].keys.target_frames == [1]


def test_windows_relative_path_with_backslashes_is_converted(media, monkeypatch):
    monkeypatch.chdir(media)
    path = write(media, "[[datasets]]\nvideo_directory = 'videos\\\\'\ncache_directory = 'cache\\\\sub'\n")
    ds = load_dataset_config(path).datasets[0]
    assert ds.cache_directory == Path("cache/sub")


INVALID = {
    "misspelled key names the dataset and suggests": (
        '[[datasets]]\nvideo_directory = "{v}"\nframe_extration = "head"\n',
        r"datasets\[0\]: unknown key 'frame_extration'.*Did you mean 'frame_extraction'",
    ),
    "bad choice names key, value and accepted values": (
        '[[datasets]]\nvideo_directory = "{v}"\nframe_extraction = "heda"\n',
        r"datasets\[0\]: key 'frame_extraction' got 'heda'; accepted: 'head', 'chunk', 'slide', 'uniform', 'full'.*Did you mean 'head'",
    ),
    "wrong type": (
        '[[datasets]]\nvideo_directory = "{v}"\nbatch_size = "two"\n',
        r"datasets\[0\]: key 'batch_size' got 'two'.*accepted: an integer",
    ),
    "negative value in second dataset": (
        '[[datasets]]\nvideo_directory = "{v}"\n[[datasets]]\nvideo_directory = "{v2}"\nnum_repeats = 0\n',
        r"datasets\[1\]: num_repeats must be positive, got 0",
    ),
    "video key in an image dataset": (
        '[[datasets]]\nimage_directory = "{i}"\ntarget_frames = [1]\n',
        r"datasets\[0\]: key 'target_frames' is not accepted in an image dataset",
    ),
    "dataset-only key in general": (
        '[general]\nvideo_directory = "{v}"\n[[datasets]]\nvideo_directory = "{v}"\n',
        r"\[general\]: unknown key 'video_directory' \(it belongs in a \[\[datasets\]\] table\)",
    ),
    "no media source, with a hint for a typo": (
        '[[datasets]]\nvideo_dir = "{v}"\n',
        r"datasets\[0\]: names no media.*found key 'video_dir'.*Did you mean 'video_directory'",
    ),
    "missing media directory": (
        '[[datasets]]\nvideo_directory = "{v}/nope"\n',
        r"datasets\[0\]: key 'video_directory': .*nope does not exist",
    ),
    "jsonl without cache directory": (
        '[[datasets]]\nvideo_jsonl_file = "{j}"\n',
        r"datasets\[0\]: key 'cache_directory' is required with video_jsonl_file",
    ),
    "shared cache directory": (
        '[[datasets]]\nvideo_directory = "{v}"\n[[datasets]]\nimage_directory = "{i}"\ncache_directory = "{v}"\n',
        r"datasets\[0\] and datasets\[1\] share the cache directory",
    ),
    "bad resolution": (
        '[general]\nresolution = [640, 480, 3]\n[[datasets]]\nvideo_directory = "{v}"\n',
        r"\[general\]: key 'resolution' got \[640, 480, 3\]: expected an integer or \[width, height\]",
    ),
    "unknown top-level table": (
        '[genral]\nbatch_size = 1\n[[datasets]]\nvideo_directory = "{v}"\n',
        r"unknown table \[genral\].*Did you mean 'general'",
    ),
    "no datasets": ("[general]\nbatch_size = 1\n", r"no \[\[datasets\]\] table"),
    "both video and image": (
        '[[datasets]]\nvideo_directory = "{v}"\nimage_directory = "{i}"\n',
        r"datasets\[0\]: give either video or image media, not both",
    ),
    "architecture key with a bad value": (
        '[[datasets]]\nvideo_directory = "{v}"\nfp_latent_window_size = 9.5\n',
        r"datasets\[0\]: key 'fp_latent_window_size' got 9.5: expected an integer",
    ),
    "windows drive letter in a double-quoted string": (
        '[[datasets]]\nvideo_directory = "C:\\data\\videos"\n',
        r"not valid TOML.*write Windows paths in single quotes",
    ),
    "windows drive letter that cannot exist here": (
        "[[datasets]]\nvideo_directory = 'C:\\data\\videos'\n",
        r"datasets\[0\]: key 'video_directory' got 'C:\\\\data\\\\videos': .*Windows path with a drive letter",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_dataset_config(media, case):
    text, pattern = INVALID[case]
    (media / "list.jsonl").write_text("")
    path = write(
        media,
        text.format(v=media / "videos", v2=media / "videos2", i=media / "images", j=media / "list.jsonl"),
    )
    with pytest.raises(ConfigError, match=pattern) as info:
        load_dataset_config(path, ArchKeys)
    assert str(path) in str(info.value)


def test_missing_file_names_the_option(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.toml does not exist \(option --dataset_config\)"):
        load_dataset_config(tmp_path / "nope.toml")
