"""Reading checkpoints tensor by tensor: safetensors headers and data, and pickled state dicts (safely)."""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import attrs
import torch

from tuner_core.errors import ModelLoadError
from tuner_core.weights.files import CheckpointFiles, resolve_checkpoint
from tuner_core.weights.safetensors_file import StoredTensor, read_header, read_tensor
from tuner_core.weights.sniff import SAFETENSORS, TORCH_PICKLE, TORCH_ZIP, not_a_checkpoint, sniff_format

logger = logging.getLogger(__name__)


@attrs.frozen
class TensorInfo:
    """What a checkpoint says about one tensor before it is read.

    :param shape: stored shape.
    :param dtype: stored dtype, torch's name for it (``"bfloat16"``, ``"float32"``, ...).
    :param file: the file holding it.
    """

    shape: tuple[int, ...]
    dtype: str
    file: Path


class TensorSource:
    """A read-only view of a checkpoint's tensors: names and shapes up front, data one tensor at a time."""

    #: Human name for messages (a path, or a path and a shard count).
    description: str = ""

    def infos(self) -> Mapping[str, TensorInfo]:
        """Every tensor name with its stored shape, dtype and file, without reading data."""
        raise NotImplementedError

    def get(self, key: str) -> torch.Tensor:
        """Read one tensor (on the CPU, in its stored dtype)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release open files."""

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class SafetensorsSource(TensorSource):
    """Tensors of one or more safetensors files (a shard set); headers read up front, data on demand."""

    def __init__(self, files: tuple[Path, ...] | list[Path]) -> None:
        """Open ``files`` and read their headers.

        :raises ModelLoadError: for an unreadable or truncated file, or a tensor name stored in two files.
        """
        self.files = tuple(files)
        self.description = CheckpointFiles(files=self.files).describe()
        self._stack = ExitStack()
        self._where: dict[str, tuple[BinaryIO, Path, StoredTensor]] = {}
        self._infos: dict[str, TensorInfo] = {}
        self._metadata: dict[str, str] = {}
        try:
            for index, file in enumerate(self.files):
                try:
                    handle = self._stack.enter_context(open(file, "rb"))  # noqa: SIM115 - closed by the stack
                except OSError as exc:
                    raise ModelLoadError(f"{file}: cannot open: {exc}") from exc
                header = read_header(file, handle)
                if index == 0:
                    self._metadata = header.metadata
                for key, stored in header.tensors.items():
                    if key in self._infos:
                        raise ModelLoadError(
                            f"tensor {key!r} is stored twice, in {self._infos[key].file} and {file}; "
                            "are two different checkpoints mixed in one folder?"
                        )
                    dtype_name = str(stored.dtype).removeprefix("torch.")
                    self._infos[key] = TensorInfo(stored.shape, dtype_name, file)
                    self._where[key] = (handle, file, stored)
        except BaseException:
            self._stack.close()
            raise

    def infos(self) -> Mapping[str, TensorInfo]:
        """Every tensor name with its stored shape, dtype and file."""
        return self._infos

    def get(self, key: str) -> torch.Tensor:
        """Read one tensor from its file into new CPU memory."""
        handle, file, stored = self._where[key]
        try:
            return read_tensor(handle, stored, file)
        except OSError as exc:
            raise ModelLoadError(f"{file}: reading tensor {key!r} failed: {exc}") from exc

    def metadata(self) -> dict[str, str]:
        """The string metadata (safetensors ``__metadata__``) of the first file."""
        return dict(self._metadata)

    def close(self) -> None:
        """Close every file."""
        self._where.clear()
        self._stack.close()


class StateDictSource(TensorSource):
    """Tensors of an in-memory state dict (for example a pickled ``.pt`` checkpoint)."""

    def __init__(
        self, state_dict: Mapping[str, torch.Tensor], description: str, file: Path | None = None
    ) -> None:
        """Wrap ``state_dict``; ``description`` names it in messages."""
        self._tensors = dict(state_dict)
        self.description = description
        origin = file or Path(description)
        self._infos = {
            key: TensorInfo(tuple(t.shape), str(t.dtype).removeprefix("torch."), origin)
            for key, t in self._tensors.items()
        }

    def infos(self) -> Mapping[str, TensorInfo]:
        """Every tensor name with its shape and dtype."""
        return self._infos

    def get(self, key: str) -> torch.Tensor:
        """The tensor itself; it is dropped from this source so memory frees as the model takes it."""
        return self._tensors.pop(key)


def _torch_load(path: Path) -> object:
    """``torch.load(weights_only=True)`` of a file that must be a PyTorch checkpoint, errors explained."""
    kind = sniff_format(path)
    if kind not in (TORCH_ZIP, TORCH_PICKLE):
        raise not_a_checkpoint(path)
    try:
        # only zip archives can be memory-mapped; legacy pickles are read whole
        return torch.load(path, map_location="cpu", weights_only=True, mmap=kind == TORCH_ZIP)
    except MemoryError:
        raise
    except pickle.UnpicklingError as exc:
        refused = re.search(r"Unsupported (?:global: GLOBAL|class) (\S+)", str(exc))
        # A legacy pickle cut short mid-name reports the stub ("collections.Ordered") as a refused global.
        if refused and (kind == TORCH_ZIP or _stored_whole(path, refused[1])):
            raise ModelLoadError(
                f"{path}: refusing to load: the file contains pickled objects other than tensors "
                f"({refused[1]}; loading it would execute code). Convert it to safetensors."
            ) from exc
        raise _damaged(path, exc) from exc
    except Exception as exc:
        # A damaged archive or pickle fails in many ways (RuntimeError, EOFError, struct.error, KeyError...);
        # each is the same news for the user.
        raise _damaged(path, exc) from exc


def _stored_whole(path: Path, name: str) -> bool:
    """Whether a legacy pickle holds the global ``name`` up to its end of line (protocol 2's GLOBAL)."""
    try:
        return f"{name.rpartition('.')[2]}\n".encode() in path.read_bytes()
    except OSError:
        return True


def _damaged(path: Path, exc: BaseException) -> ModelLoadError:
    """The error for a PyTorch checkpoint whose data cannot be read, with torch's reason in brief."""
    # torch wraps the weights-only unpickler's reason in advice about weights_only=False: keep the reason
    text = str(exc).rpartition("WeightsUnpickler error:")[2].strip()
    detail = text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(exc).__name__
    detail = detail[:120]
    return ModelLoadError(
        f"{path}: a damaged PyTorch checkpoint ({detail}): the file is truncated or corrupt. "
        "Download it again, or pass a .safetensors copy."
    )


def load_pt_state_dict(
    path: str | Path, *, prefix: str | None = None, unwrap: tuple[str, ...] = ("state_dict",)
) -> dict[str, torch.Tensor]:
    """Read a pickled PyTorch checkpoint without executing any pickled code (``weights_only=True``).

    :param prefix: keep only keys starting with it, with the prefix removed (``"model."``).
    :param unwrap: entries that hold the real state dict (``{"state_dict": {...}, "epoch": 3}``), tried in order.
    :raises ModelLoadError: for unreadable files, files that need code execution, or a prefix nothing has.
    """
    path = Path(path)
    obj = _torch_load(path)
    for name in unwrap:
        if isinstance(obj, Mapping) and isinstance(obj.get(name), Mapping):
            obj = obj[name]
    if not isinstance(obj, Mapping):
        raise ModelLoadError(f"{path}: holds a {type(obj).__name__}, not a state dict of named tensors")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    skipped = len(obj) - len(tensors)
    if skipped:
        logger.debug("%s: ignored %d non-tensor entries", path, skipped)
    if prefix:
        tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not tensors:
            raise ModelLoadError(f"{path}: no tensor name starts with {prefix!r}")
    return tensors


def open_checkpoint(path: str | Path | CheckpointFiles, *, prefix: str | None = None) -> TensorSource:
    """Open a checkpoint (any form :func:`~tuner_core.weights.files.resolve_checkpoint` accepts) for reading.

    :param prefix: for pickled files, the key prefix to keep and strip (see :func:`load_pt_state_dict`).
    """
    files = path if isinstance(path, CheckpointFiles) else resolve_checkpoint(path)
    if len(files.files) > 1:  # shard sets are safetensors by construction
        return SafetensorsSource(files.files)
    file = files.files[0]
    if file.name.lower().endswith(".safetensors"):
        # torch.load itself treats this name as safetensors, so the name decides; a file that is not one
        # gets a message saying what it is instead.
        return SafetensorsSource(files.files)
    # Otherwise the content decides: a safetensors file renamed .ckpt loads, and a text file renamed .pt is
    # reported as text rather than as a broken pickle.
    kind = sniff_format(file)
    if kind == SAFETENSORS:
        return SafetensorsSource(files.files)
    if kind in (TORCH_ZIP, TORCH_PICKLE):
        state_dict = load_pt_state_dict(file, prefix=prefix)
        return StateDictSource(state_dict, str(file), file)
    raise not_a_checkpoint(file)
