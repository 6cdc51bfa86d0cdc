"""Atomic file writes: a killed or interrupted run leaves the previous file or the complete new one, never half.

Every file tuner writes (cache files, weights, JSON, videos, images, plots) goes through :func:`atomic_write`::

    with atomic_write(path) as temp:
        save_file(tensors, str(temp))  # any writer that takes a path

The temporary file lies beside the target (same file system, so the rename is atomic); it is hidden and ends
in :data:`TEMP_SUFFIX` instead of the target's extension, so no glob for finished files picks it up, and
``tuner_core.cache.store.remove_temp_files`` finds the ones killed runs left behind.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["FILE_MODE", "TEMP_SUFFIX", "atomic_write", "fsync_directory", "temp_path"]

TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Mode of the files tuner writes: what ``open()`` would give. Temporary files may be created private
#: (safetensors and mkstemp use 0600), so the mode is set before the rename makes a file visible.
FILE_MODE = 0o666 & ~_umask()


def temp_path(path: Path, suffix: str = TEMP_SUFFIX) -> Path:
    """A hidden name beside ``path`` ending in ``suffix``; unique, so threads writing one target never collide."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


def fsync_directory(directory: Path) -> None:
    """Flush ``directory``'s entries to disk, so a rename into it survives a crash (where the OS allows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported on every platform / file system
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; on success it replaces ``path``.

    The caller writes the temporary file by path (and closes it). Then it is flushed to disk, given
    :data:`FILE_MODE`, renamed over ``path`` and the directory flushed. On any exception, Ctrl-C included,
    the temporary file is removed and ``path`` keeps its old content. Parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path(path)
    try:
        yield temp
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(temp, FILE_MODE)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
