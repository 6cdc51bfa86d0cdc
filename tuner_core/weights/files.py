"""Which files make up a checkpoint: shard sets, Hugging Face snapshot directories, single files."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import attrs

from tuner_core.errors import ModelLoadError

logger = logging.getLogger(__name__)

#: ``<stem>-00001-of-00003.safetensors``: one file of a shard set (Hugging Face naming).
SHARD_PATTERN = re.compile(r"^(?P<stem>.+)-(?P<index>\d+)-of-(?P<count>\d+)\.(?P<ext>safetensors)$")

#: Suffixes of pickled PyTorch checkpoints, read with ``torch.load(weights_only=True)``.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

INDEX_SUFFIX = ".safetensors.index.json"


@attrs.frozen
class CheckpointFiles:
    """The resolved files of one checkpoint.

    :param files: weight files in load order (all shards of a set, or one file).
    :param config: a ``config.json`` found with them (snapshot directory or beside the files), if any.
    :param index: the ``*.safetensors.index.json`` the shard list came from, if any.
    """

    files: tuple[Path, ...]
    config: Path | None = None
    index: Path | None = None

    @property
    def is_pickle(self) -> bool:
        """Whether the name says pickled PyTorch file (:func:`~tuner_core.weights.open_checkpoint` goes by
        the content, see :mod:`tuner_core.weights.sniff`)."""
        return len(self.files) == 1 and self.files[0].suffix.lower() in PICKLE_SUFFIXES

    def describe(self) -> str:
        """A short human name of the checkpoint for messages: one file, or the first shard and a count."""
        if len(self.files) == 1:
            return str(self.files[0])
        return f"{self.files[0]} (+{len(self.files) - 1} more shards)"


def shard_files(path: Path) -> tuple[Path, ...]:
    """All files of the shard set ``path`` belongs to, or ``(path,)`` when its name is not a shard name.

    :raises ModelLoadError: if a shard of the set is missing.
    """
    match = SHARD_PATTERN.match(path.name)
    if match is None:
        return (path,)
    width = len(match["index"])
    count = int(match["count"])
    if count < 1 or int(match["index"]) > count:
        raise ModelLoadError(
            f"{path}: shard name says {match['index']} of {match['count']}, which is impossible"
        )
    names = [f"{match['stem']}-{i:0{width}d}-of-{match['count']}.{match['ext']}" for i in range(1, count + 1)]
    files = tuple(path.parent / name for name in names)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ModelLoadError(
            f"{path}: checkpoint is split into {count} shards but {len(missing)} missing in {path.parent}: "
            + ", ".join(missing)
            + ". Download every shard of the set."
        )
    return files


def _files_from_index(index: Path) -> tuple[Path, ...]:
    """Weight files listed by a ``*.safetensors.index.json`` (its ``weight_map`` values), all present."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"{index}: not a readable safetensors index (no 'weight_map'): {exc}") from exc
    if not names:
        raise ModelLoadError(f"{index}: the index lists no weight files")
    files = tuple(index.parent / name for name in names)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ModelLoadError(
            f"{index}: {len(missing)} of the {len(files)} files it lists are missing: "
            + ", ".join(missing)
            + ". Download every shard of the set."
        )
    return files


def _resolve_directory(directory: Path) -> tuple[tuple[Path, ...], Path | None]:
    """Weight files of a snapshot directory, and the index they came from."""
    indexes = sorted(directory.glob("*" + INDEX_SUFFIX))
    if indexes:
        if len(indexes) > 1:
            logger.warning("%s holds several indexes; using %s", directory, indexes[0].name)
        return _files_from_index(indexes[0]), indexes[0]
    safetensors = sorted(p for p in directory.glob("*.safetensors") if p.is_file())
    shards = [p for p in safetensors if SHARD_PATTERN.match(p.name)]
    if shards:
        return shard_files(shards[0]), None
    if safetensors:
        if len(safetensors) > 1:
            logger.warning(
                "%s holds %d .safetensors files; loading the first, %s",
                directory,
                len(safetensors),
                safetensors[0],
            )
        return (safetensors[0],), None
    pickles = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        return (pickles[0],), None
    raise ModelLoadError(f"{directory}: no .safetensors (or .pt/.pth/.bin) weight files in this directory")


def resolve_checkpoint(path: str | Path) -> CheckpointFiles:
    """Resolve a checkpoint given as a file, the first (or any) shard of a set, an index file or a directory.

    A directory is read like a Hugging Face snapshot: its ``*.safetensors.index.json`` when present, else its
    shard set, else its alphabetically first ``.safetensors`` file (then a pickled file). A ``config.json``
    in the directory or beside the files is reported in :attr:`CheckpointFiles.config`.

    :raises ModelLoadError: if the path does not exist, names nothing loadable, or a shard is missing.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(
            f"{path}: no such file or directory (give a weights file, a shard or a directory)"
        )
    index = None
    if path.is_dir():
        files, index = _resolve_directory(path)
        folder = path
    elif path.name.endswith(INDEX_SUFFIX):
        files, index = _files_from_index(path), path
        folder = path.parent
    else:
        files = shard_files(path)
        folder = path.parent
    config = folder / "config.json"
    return CheckpointFiles(files=files, config=config if config.is_file() else None, index=index)
