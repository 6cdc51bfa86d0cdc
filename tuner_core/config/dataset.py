"""The dataset config file (TOML or JSON): ``[general]`` plus one ``[[datasets]]`` table per dataset.

The format is musubi-tuner's. Keys in ``[general]`` apply to every dataset unless the dataset table sets
them; an architecture may accept extra dataset keys (``fp_latent_window_size`` for FramePack). Errors
name the file, the table (``datasets[N]``, counted from 0), the key, the bad value and what is accepted.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from tuner_core.errors import ConfigError
from tuner_core.options import build_options, did_you_mean, option, option_fields

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FRAME_EXTRACTION = ("head", "chunk", "slide", "uniform", "full")
VIDEO_SOURCES = ("video_directory", "video_jsonl_file")
IMAGE_SOURCES = ("image_directory", "image_jsonl_file")


def _resolution(value: Any) -> tuple[int, int]:
    """``512`` or ``[960, 544]`` (width, height) to a (width, height) pair."""
    if isinstance(value, bool):
        raise ValueError("expected an integer or [width, height]")
    if isinstance(value, int):
        return (value, value)
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return (int(value[0]), int(value[1]))
    raise ValueError("expected an integer or [width, height]")


def _positive(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if v is not None and v <= 0:
            raise ValueError(f"{attribute.name} must be positive, got {v!r}")


@attrs.frozen(kw_only=True)
class GeneralKeys:
    """Keys allowed in ``[general]``; each may also be set per dataset."""

    resolution: Any = option((960, 544), help="Target size: an integer or [width, height].")
    caption_extension: str | None = option(None, help="Extension of caption files next to the media (.txt).")
    batch_size: int = option(1, help="Items per batch.", validator=_positive)
    num_repeats: int = option(1, help="How often each item is repeated per epoch.", validator=_positive)
    enable_bucket: bool = option(False, help="Group media into aspect-ratio buckets.")
    bucket_no_upscale: bool = option(False, help="Never upscale media to reach a bucket.")
    skip_corrupted_cache: bool = option(False, help="Skip unreadable cache files while training.")


#: ``target_frames`` of a video dataset that sets none (the reference's default).
DEFAULT_TARGET_FRAMES = [1]


@attrs.frozen(kw_only=True)
class VideoKeys(GeneralKeys):
    """Keys of a video dataset table."""

    video_directory: Path | None = option(None, help="Directory of videos with caption files.")
    video_jsonl_file: Path | None = option(None, help='JSON-lines file of {"video_path", "caption"}.')
    control_directory: Path | None = option(None, help="Directory of control videos with the same names.")
    cache_directory: Path | None = option(None, help="Where caches go (default: the media directory).")
    target_frames: list[int] = option(
        factory=lambda: list(DEFAULT_TARGET_FRAMES), help="Clip lengths to extract.", validator=_positive
    )
    frame_extraction: str = option("head", help="How clips are taken.", choices=FRAME_EXTRACTION)
    frame_stride: int = option(1, help="Step between clip starts for slide.", validator=_positive)
    frame_sample: int = option(1, help="Number of clips for uniform.", validator=_positive)
    max_frames: int = option(129, help="Longest clip for full.", validator=_positive)
    source_fps: float | None = option(None, help="Frame rate of the sources (resampled to the model's).")


@attrs.frozen(kw_only=True)
class ImageKeys(GeneralKeys):
    """Keys of an image dataset table."""

    image_directory: Path | None = option(None, help="Directory of images with caption files.")
    image_jsonl_file: Path | None = option(None, help='JSON-lines file of {"image_path", "caption"}.')
    control_directory: Path | None = option(None, help="Directory of control images.")
    cache_directory: Path | None = option(None, help="Where caches go (default: the media directory).")
    multiple_target: bool = option(False, help="Items have several target images.")
    no_resize_control: bool = option(False, help="Keep control images at their own size.")
    control_resolution: Any = option(
        None, help="Size control images are resized to: integer or [width, height]."
    )


@attrs.frozen(kw_only=True)
class DatasetSettings:
    """One dataset after merging ``[general]`` and defaults.

    :param keys: the core keys (:class:`VideoKeys` or :class:`ImageKeys`).
    :param extra: the architecture's dataset keys (an instance of its ``dataset_options``), or ``None``.
    """

    index: int
    keys: VideoKeys | ImageKeys
    extra: Any
    cache_directory: Path

    @property
    def is_video(self) -> bool:
        """Whether this is a video dataset."""
        return isinstance(self.keys, VideoKeys)

    @property
    def table(self) -> str:
        """The table's name in error messages."""
        return f"datasets[{self.index}]"

    @property
    def resolution(self) -> tuple[int, int]:
        """Target ``(width, height)``."""
        return self.keys.resolution

    @property
    def media_source(self) -> Path:
        """The directory or jsonl file the media are listed in."""
        k = self.keys
        found = (
            (k.video_directory or k.video_jsonl_file)
            if isinstance(k, VideoKeys)
            else (k.image_directory or k.image_jsonl_file)
        )
        assert found is not None
        return found


@attrs.frozen(kw_only=True)
class DatasetConfig:
    """A whole dataset config file."""

    path: Path
    datasets: tuple[DatasetSettings, ...]


def _key_label(name: str) -> str:
    return f"key {name!r}"


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"dataset config {path} does not exist (option --dataset_config)")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    elif suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            hint = ""
            if "\\" in text:
                hint = (
                    " A backslash in a double-quoted TOML string starts an escape sequence; write Windows "
                    "paths in single quotes ('C:\\data\\videos') or with forward slashes."
                )
            raise ConfigError(f"{path}: not valid TOML: {exc}.{hint}") from exc
    else:
        raise ConfigError(f"{path}: dataset config must be a .toml or .json file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table at the top level")
    return data


def load_dataset_config(path: Path | str, dataset_options: type | None = None) -> DatasetConfig:
    """Read and validate a dataset config file.

    :param path: the ``.toml`` or ``.json`` file.
    :param dataset_options: the selected architecture's extra dataset keys (an attrs class), if any.
    :raises ConfigError: for any problem, naming the file, table and key.
    """
    path = Path(path)
    data = _read(path)
    unknown_top = set(data) - {"general", "datasets"}
    if unknown_top:
        name = sorted(unknown_top)[0]
        raise ConfigError(
            f"{path}: unknown table [{name}]; a dataset config has [general] and [[datasets]]."
            + did_you_mean(name, ["general", "datasets"])
        )
    general = data.get("general", {})
    if not isinstance(general, dict):
        raise ConfigError(f"{path}: [general] must be a table")
    general_fields = {f.name for f in option_fields(GeneralKeys)}
    for key in general:
        if key not in general_fields:
            dataset_only = {f.name for f in option_fields(VideoKeys)} | {
                f.name for f in option_fields(ImageKeys)
            }
            if dataset_options is not None:
                dataset_only |= {f.name for f in option_fields(dataset_options)}
            where = " (it belongs in a [[datasets]] table)" if key in dataset_only else ""
            raise ConfigError(
                f"{path}: [general]: unknown key {key!r}{where}; [general] accepts "
                + ", ".join(sorted(general_fields))
                + "."
                + did_you_mean(key, sorted(general_fields))
            )
    # Validate [general] on its own so its errors name [general], not a dataset.
    build_options(
        GeneralKeys,
        _normalise_general(general, path, "[general]"),
        source=f"{path}: [general]",
        label=_key_label,
    )

    tables = data.get("datasets")
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"{path}: no [[datasets]] table; add at least one dataset")
    datasets = [_dataset(path, i, table, general, dataset_options) for i, table in enumerate(tables)]

    seen: dict[Path, int] = {}
    for ds in datasets:
        key = ds.cache_directory.resolve()
        if key in seen:
            raise ConfigError(
                f"{path}: datasets[{seen[key]}] and datasets[{ds.index}] share the cache directory {ds.cache_directory}; "
                "each dataset needs its own cache_directory (it defaults to the media directory)"
            )
        seen[key] = ds.index
    return DatasetConfig(path=path, datasets=tuple(datasets))


def _normalise_general(values: Mapping[str, Any], path: Path, table: str) -> dict[str, Any]:
    out = dict(values)
    for key in ("resolution", "control_resolution"):
        if key in out and out[key] is not None:
            try:
                out[key] = _resolution(out[key])
            except ValueError as exc:
                raise ConfigError(f"{path}: {table}: key {key!r} got {out[key]!r}: {exc}") from exc
    return out


def _dataset(
    path: Path, index: int, table: Any, general: Mapping[str, Any], dataset_options: type | None
) -> DatasetSettings:
    where = f"datasets[{index}]"
    source = f"{path}: {where}"
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: expected a table")
    video = [k for k in VIDEO_SOURCES if k in table]
    image = [k for k in IMAGE_SOURCES if k in table]
    if video and image:
        raise ConfigError(f"{source}: give either video or image media, not both ({video[0]} and {image[0]})")
    if len(video) > 1 or len(image) > 1:
        both = video if len(video) > 1 else image
        raise ConfigError(f"{source}: give one of {both[0]} and {both[1]}, not both")
    if not video and not image:
        raise ConfigError(
            f"{source}: names no media; give one of video_directory, video_jsonl_file, image_directory, image_jsonl_file"
            + _misspelled_source(table)
        )
    core_cls = VideoKeys if video else ImageKeys
    core_names = {f.name for f in option_fields(core_cls)}
    extra_names = {f.name for f in option_fields(dataset_options)} if dataset_options is not None else set()
    other_cls = ImageKeys if video else VideoKeys
    other_names = {f.name for f in option_fields(other_cls)} - core_names
    for key in table:
        if key in core_names or key in extra_names:
            continue
        kind = "a video" if video else "an image"
        if key in other_names:
            raise ConfigError(f"{source}: key {key!r} is not accepted in {kind} dataset")
        accepted = sorted(core_names | extra_names)
        raise ConfigError(
            f"{source}: unknown key {key!r}; {kind} dataset accepts "
            + ", ".join(accepted)
            + "."
            + did_you_mean(key, accepted)
        )

    merged = {**general, **{k: v for k, v in table.items() if k in core_names}}
    keys = build_options(core_cls, _normalise_general(merged, path, where), source=source, label=_key_label)
    extra = None
    if dataset_options is not None:
        extra = build_options(
            dataset_options,
            {k: v for k, v in table.items() if k in extra_names},
            source=source,
            label=_key_label,
        )

    media = (
        keys.video_directory or keys.video_jsonl_file
        if video
        else keys.image_directory or keys.image_jsonl_file
    )
    media_key = (video or image)[0]
    assert media is not None
    if not media.exists():
        raise ConfigError(f"{source}: key {media_key!r}: {media} does not exist")
    if media_key.endswith("_directory") and not media.is_dir():
        raise ConfigError(f"{source}: key {media_key!r}: {media} is not a directory")
    if media_key.endswith("_jsonl_file") and keys.cache_directory is None:
        raise ConfigError(f"{source}: key 'cache_directory' is required with {media_key}")
    if keys.control_directory is not None and not keys.control_directory.is_dir():
        raise ConfigError(f"{source}: key 'control_directory': {keys.control_directory} is not a directory")
    cache = keys.cache_directory or media
    return DatasetSettings(index=index, keys=keys, extra=extra, cache_directory=cache)


def _misspelled_source(table: Mapping[str, Any]) -> str:
    for key in table:
        hint = did_you_mean(key, [*VIDEO_SOURCES, *IMAGE_SOURCES])
        if hint:
            return f" (found key {key!r}.{hint})"
    return ""


__all__ = [
    "DatasetConfig",
    "DatasetSettings",
    "GeneralKeys",
    "ImageKeys",
    "VideoKeys",
    "load_dataset_config",
]
