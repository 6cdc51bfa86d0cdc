"""Listing a dataset's media: files of a directory or lines of a JSON-lines file, with captions and controls.

Nothing is decoded here. Each medium that cannot be used (no caption, no control, a bad jsonl line) is
reported once with ``logging.warning`` and returned as a :class:`SkippedMedia`, so callers can count them.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import attrs

from tuner_core.config.dataset import DatasetSettings, ImageKeys, VideoKeys
from tuner_core.errors import DataError
from tuner_core.media.image import is_image_file
from tuner_core.media.video import VIDEO_EXTENSIONS, is_video_file

logger = logging.getLogger(__name__)

#: Caption file extension used when a directory dataset does not set ``caption_extension``.
DEFAULT_CAPTION_EXTENSION = ".txt"


@attrs.frozen
class SkippedMedia:
    """A medium left out of a dataset, and why (the same text was logged once as a warning)."""

    path: Path
    reason: str


@attrs.frozen
class MediaEntry:
    """One listed medium: its file (or frame directory), caption and control files."""

    source: Path
    caption: str
    controls: tuple[Path, ...] = ()


def skip(skipped: list[SkippedMedia], path: Path, reason: str) -> None:
    """Record a skipped medium and report it once."""
    logger.warning("skipping %s: %s", path, reason)
    skipped.append(SkippedMedia(path=path, reason=reason))


def _list_directory(directory: Path, key: str, table: str) -> list[Path]:
    """Visible entries of a directory in name order; an unreadable directory is an error."""
    try:
        with os.scandir(directory) as entries:
            names = sorted(e.name for e in entries if not e.name.startswith("."))
    except OSError as exc:
        raise DataError(
            f"{table}: key {key!r}: cannot read the directory {directory} ({exc.strerror or exc}); "
            "check that it exists and is readable"
        ) from exc
    return [directory / n for n in names]


def _read_caption(path: Path, extension: str | None, skipped: list[SkippedMedia]) -> str | None:
    caption_file = path.parent / (path.stem + (extension or DEFAULT_CAPTION_EXTENSION))
    try:
        return caption_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        setting = f"caption_extension = {extension!r}" if extension else "caption_extension unset, so .txt"
        skip(skipped, path, f"no caption file {caption_file.name} ({setting})")
    except UnicodeDecodeError:
        skip(skipped, path, f"caption file {caption_file} is not UTF-8 text")
    except OSError as exc:
        skip(skipped, path, f"cannot read caption file {caption_file}: {exc.strerror or exc}")
    return None


def _video_control(source: Path, control_dir: Path, candidates: set[str]) -> Path | None:
    """The control of a video: same file name, else a frame directory named by the stem, else another extension."""
    if source.name in candidates and (control_dir / source.name).is_file():
        return control_dir / source.name
    if source.stem in candidates and (control_dir / source.stem).is_dir():
        return control_dir / source.stem
    for name in sorted(candidates):
        path = Path(name)
        if path.stem == source.stem and path.suffix.lower() in VIDEO_EXTENSIONS:
            return control_dir / name
    return None


def _image_controls(sources: list[Path], control_dir: Path, names: list[str]) -> dict[Path, tuple[Path, ...]]:
    """Control images per image: ``stem.*`` first, then ``stem_<n>.*`` by ``n``.

    Images with longer stems claim their controls first, so ``a_1.png``'s controls are not given to ``a.png``.
    """
    free = {n for n in names if is_image_file(Path(n))}
    found: dict[Path, tuple[Path, ...]] = {}
    for source in sorted(sources, key=lambda p: len(p.stem), reverse=True):
        stem = source.stem
        order: list[tuple[int, str]] = []
        for name in free:
            body = Path(name).stem
            if body == stem:
                order.append((0, name))
            elif body.startswith(stem + "_") and body[len(stem) + 1 :].isdigit():
                order.append((int(body[len(stem) + 1 :]) + 1, name))
        free -= {name for _, name in order}
        found[source] = tuple(control_dir / name for _, name in sorted(order))
    return found


def _list_directory_dataset(settings: DatasetSettings, skipped: list[SkippedMedia]) -> list[MediaEntry]:
    keys = settings.keys
    is_video = isinstance(keys, VideoKeys)
    key = "video_directory" if is_video else "image_directory"
    directory = settings.media_source
    wanted = is_video_file if is_video else is_image_file
    sources = [p for p in _list_directory(directory, key, settings.table) if wanted(p) and p.is_file()]

    controls: dict[Path, tuple[Path, ...]] = {}
    if keys.control_directory is not None:
        listed = [
            p.name for p in _list_directory(keys.control_directory, "control_directory", settings.table)
        ]
        if is_video:
            names = set(listed)
            for source in sources:
                control = _video_control(source, keys.control_directory, names)
                controls[source] = (control,) if control is not None else ()
        else:
            controls = _image_controls(sources, keys.control_directory, listed)

    entries = []
    for source in sources:
        caption = _read_caption(source, keys.caption_extension, skipped)
        if caption is None:
            continue
        if keys.control_directory is not None and not controls.get(source):
            pattern = f"{source.stem}.* or {source.stem}_<n>.*" if not is_video else f"{source.stem}.*"
            skip(skipped, source, f"no control file {pattern} in control_directory {keys.control_directory}")
            continue
        entries.append(MediaEntry(source=source, caption=caption, controls=controls.get(source, ())))
    return entries


def _resolve(value: Any, jsonl: Path) -> Path | None:
    """A path from a jsonl line: absolute, else beside the jsonl file, else relative to the working directory."""
    if not isinstance(value, str) or not value:
        return None
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    beside = jsonl.parent / path
    return beside if beside.exists() or not path.exists() else path


def _control_keys(record: dict[str, Any]) -> list[str]:
    numbered = sorted(
        (int(m.group(1)), k) for k in record if (m := re.fullmatch(r"control_path_(\d+)", k)) is not None
    )
    return (["control_path"] if "control_path" in record else []) + [k for _, k in numbered]


def _list_jsonl_dataset(settings: DatasetSettings, skipped: list[SkippedMedia]) -> list[MediaEntry]:
    keys = settings.keys
    is_video = isinstance(keys, VideoKeys)
    jsonl = settings.media_source
    path_key = "video_path" if is_video else "image_path"
    try:
        lines = jsonl.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{settings.table}: cannot read the JSON-lines file {jsonl}: {exc}") from exc

    records: list[tuple[str, dict[str, Any]]] = []
    for number, line in enumerate(lines, start=1):
        where = f"{jsonl.name} line {number}"
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            skip(skipped, jsonl, f"{where}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(record, dict):
            skip(skipped, jsonl, f"{where}: expected a JSON object")
            continue
        records.append((where, record))
    wants_controls = any(_control_keys(r) for _, r in records)

    entries = []
    for where, record in records:
        raw = record.get(path_key, record.get("image_path_0") if not is_video else None)
        source = _resolve(raw, jsonl)
        if source is None:
            skip(skipped, jsonl, f"{where}: no {path_key!r} string")
            continue
        if not source.exists():
            skip(skipped, source, f"{where}: the file does not exist")
            continue
        caption = record.get("caption")
        if not isinstance(caption, str):
            skip(skipped, source, f"{where}: no 'caption' string")
            continue
        control_paths = [_resolve(record[k], jsonl) for k in _control_keys(record)]
        if wants_controls and not control_paths:
            skip(skipped, source, f"{where}: other lines give control_path but this one does not")
            continue
        missing = [
            str(record[k])
            for k, p in zip(_control_keys(record), control_paths)
            if p is None or not p.exists()
        ]
        if missing:
            skip(skipped, source, f"{where}: control file {missing[0]} does not exist")
            continue
        entries.append(
            MediaEntry(source=source, caption=caption.strip(), controls=tuple(p for p in control_paths if p))
        )
    return entries


def list_media(settings: DatasetSettings) -> tuple[list[MediaEntry], list[SkippedMedia]]:
    """Every usable medium of a dataset, and the ones left out with their reasons.

    :raises DataError: if the media directory, control directory or jsonl file cannot be read.
    """
    skipped: list[SkippedMedia] = []
    keys = settings.keys
    is_jsonl = (isinstance(keys, VideoKeys) and keys.video_jsonl_file is not None) or (
        isinstance(keys, ImageKeys) and keys.image_jsonl_file is not None
    )
    if is_jsonl:
        entries = _list_jsonl_dataset(settings, skipped)
    else:
        entries = _list_directory_dataset(settings, skipped)
    return entries, skipped


__all__ = ["DEFAULT_CAPTION_EXTENSION", "MediaEntry", "SkippedMedia", "list_media", "skip"]
