"""The cache store: atomic safetensors writes, fingerprints of what produced a file, lazy reads, cleanup.

Every file tuner writes carries a fingerprint (a hash of the source file's size and mtime, the bucket,
the frame selection, the encoders and the plugin's cache version) in its metadata. A file whose
fingerprint differs from the one the current run would write is *stale* and is re-encoded; a file
without one was written by another tool (*foreign*) and is trusted for training.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from tuner_core.atomic import TEMP_SUFFIX, atomic_write
from tuner_core.cache.record import CacheRecord

log = logging.getLogger(__name__)

FINGERPRINT_KEY = "tuner.fingerprint"


class CacheStatus(enum.Enum):
    """What a cache file on disk is worth to the current run."""

    MISSING = "missing"
    FRESH = "fresh"
    STALE = "stale"
    FOREIGN = "foreign"
    CORRUPT = "corrupt"


def fingerprint(parts: Mapping[str, object]) -> str:
    """A short stable hash of ``parts`` (JSON-serialisable values)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _size_and_mtime(stat: os.stat_result) -> str:
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def source_identity(path: Path) -> str:
    """Size and modification time of a media file (or of every file of a frame directory).

    Unlike :func:`file_identity` it leaves the location out and sums a frame directory up in one entry.
    """
    if path.is_dir():
        stats = [p.stat() for p in sorted(path.iterdir()) if p.is_file()]
        return f"dir:{len(stats)}:{sum(s.st_size for s in stats)}:{max((s.st_mtime_ns for s in stats), default=0)}"
    return _size_and_mtime(path.stat())


def file_identity(path: str | Path | None) -> str:
    """Location, size and mtime of a weights file, or of every file of a snapshot directory; ``-`` for none.

    For an architecture's ``cache_identity``: a cache made with other encoder files is stale.
    """
    if path is None:
        return "-"
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return ";".join(f"{p.resolve()}:{_size_and_mtime(p.stat())}" for p in files if p.exists())


def atomic_write_safetensors(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None
) -> None:
    """Write a safetensors file so that ``path`` is either the old file or the complete new one, never half.

    ``metadata=None`` writes no metadata block; an empty mapping writes an empty one (bytes differ).
    """
    payload = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_write(path) as temp:
        save_file(payload, str(temp), metadata=None if metadata is None else dict(metadata))


def write_record(directory: Path, record: CacheRecord, item_fingerprint: str) -> Path:
    """Write one cache record atomically into ``directory``, stamped with ``item_fingerprint``."""
    path = directory / record.name
    atomic_write_safetensors(path, record.tensors, {**record.metadata, FINGERPRINT_KEY: item_fingerprint})
    return path


def read_metadata(path: Path) -> dict[str, str] | None:
    """The metadata of a safetensors file, or ``None`` if it is missing or unreadable."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (OSError, SafetensorError, ValueError, RuntimeError):
        return None


def status(path: Path, expected_fingerprint: str) -> CacheStatus:
    """Compare the file at ``path`` with what the current run would write."""
    if not path.exists():
        return CacheStatus.MISSING
    metadata = read_metadata(path)
    if metadata is None:
        return CacheStatus.CORRUPT
    found = metadata.get(FINGERPRINT_KEY)
    if found is None:
        return CacheStatus.FOREIGN
    return CacheStatus.FRESH if found == expected_fingerprint else CacheStatus.STALE


def load_tensors(path: Path, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Read tensors from a cache file through safetensors' memory map (only the requested keys)."""
    with safe_open(str(path), framework="pt") as handle:
        names = list(handle.keys()) if keys is None else list(keys)
        return {name: handle.get_tensor(name) for name in names}


def remove_temp_files(directory: Path, older_than_s: float = 3600.0) -> int:
    """Delete leftover temp files of killed runs (older than ``older_than_s``, so a running writer is safe)."""
    if not directory.is_dir():
        return 0
    now = time.time()
    removed = 0
    for temp in directory.glob(f".*{TEMP_SUFFIX}"):
        try:
            if now - temp.stat().st_mtime > older_than_s:
                temp.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def remove_orphans(directory: Path, expected: set[str], is_cache: Callable[[str], bool]) -> list[Path]:
    """Delete cache files in ``directory`` that ``is_cache`` claims but no current item will write."""
    removed = []
    if not directory.is_dir():
        return removed
    for path in sorted(directory.iterdir()):
        if path.is_file() and is_cache(path.name) and path.name not in expected:
            path.unlink()
            removed.append(path)
    if removed:
        log.info("removed %d cache files of items no longer in the dataset from %s", len(removed), directory)
    return removed


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{tensor name: (dtype, shape)}`` from a safetensors header, without reading any tensor data.

    :raises ValueError: if the file is truncated or its header is not safetensors.
    """
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise ValueError("file is shorter than a safetensors header")
        size = int.from_bytes(raw, "little")
        if size <= 0 or size > 100_000_000:
            raise ValueError("not a safetensors file")
        header = json.loads(handle.read(size))
        handle.seek(0, os.SEEK_END)
        file_size = handle.tell()
    end = max((entry["data_offsets"][1] for k, entry in header.items() if k != "__metadata__"), default=0)
    if 8 + size + end > file_size:
        raise ValueError(f"file is truncated ({file_size} bytes, header needs {8 + size + end})")
    return {k: (v["dtype"], tuple(v["shape"])) for k, v in header.items() if k != "__metadata__"}
