"""The safetensors file format, read directly: header parsing and reading one tensor into fresh memory.

Reading with plain ``readinto`` calls instead of memory-mapping the file means a loaded tensor exists once
in this process (file pages stay in the kernel's reclaimable cache, not in the process's resident set),
which is what keeps a 13B load near 1x its size. The format: an 8-byte little-endian header length, a JSON
header ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the data,
offsets counted from the end of the header.
"""

from __future__ import annotations

import ctypes
import json
import math
import struct
from pathlib import Path
from typing import Any, BinaryIO

import attrs
import torch

from tuner_core.errors import ModelLoadError
from tuner_core.weights.sniff import MAX_HEADER_BYTES, describe_start

#: safetensors dtype names and the torch dtypes they load as.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@attrs.frozen
class StoredTensor:
    """Where one tensor lives in a safetensors file."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    #: absolute byte offset of the data in the file
    offset: int
    nbytes: int


@attrs.frozen
class SafetensorsHeader:
    """The parsed header of one file."""

    tensors: dict[str, StoredTensor]
    metadata: dict[str, str]


def read_header(path: Path, handle: BinaryIO | None = None) -> SafetensorsHeader:
    """Parse and validate the header of ``path`` (every tensor must lie inside the file).

    :raises ModelLoadError: for files that are not safetensors, truncated, or use an unknown dtype.
    """
    if handle is None:
        try:
            with open(path, "rb") as own:
                return read_header(path, own)
        except OSError as exc:
            raise ModelLoadError(f"{path}: cannot open: {exc}") from exc
    try:
        size = path.stat().st_size
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise _not_safetensors(path, "shorter than 8 bytes")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise _not_safetensors(path, f"header length {length} is impossible")
        if length > size - 8:
            raise ModelLoadError(
                f"{path}: a truncated safetensors file: its header needs {length} bytes but only "
                f"{size - 8} follow. Download it again."
            )
        raw = json.loads(handle.read(length))
    except OSError as exc:
        raise ModelLoadError(f"{path}: not a readable safetensors file: {exc}") from exc
    except ValueError as exc:  # bad JSON or UTF-8 in the header
        raise _not_safetensors(path, f"its header is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise _not_safetensors(path, "its header is not a JSON object")
    metadata = raw.pop("__metadata__", None) or {}
    data_start = 8 + length
    tensors = {}
    for name, entry in raw.items():
        tensors[name] = _stored_tensor(path, name, entry, data_start, size)
    return SafetensorsHeader(tensors=tensors, metadata={str(k): str(v) for k, v in dict(metadata).items()})


def _not_safetensors(path: Path, why: str) -> ModelLoadError:
    """The error for a file named as safetensors that is not one, saying what it looks like instead."""
    try:
        seen = describe_start(path)
    except ModelLoadError:
        seen = "it cannot be read"
    # For text, an empty file or another format, what it is says enough; for unknown bytes, say what broke.
    detail = f"{why}; {seen}" if seen.startswith("it starts with the bytes") else seen
    if seen == "it is a PyTorch checkpoint":
        detail += ": rename it to .pt to load it as one"
    return ModelLoadError(
        f"{path}: not a safetensors file ({detail}). Pass the model's weights file "
        "(download it again if it came from a hub)."
    )


def _stored_tensor(path: Path, name: str, entry: Any, data_start: int, size: int) -> StoredTensor:
    """Validate one header entry."""
    try:
        dtype_name, shape, (begin, end) = (
            entry["dtype"],
            tuple(int(s) for s in entry["shape"]),
            entry["data_offsets"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: malformed header entry for tensor {name!r}") from exc
    dtype = DTYPES.get(dtype_name)
    if dtype is None:
        raise ModelLoadError(f"{path}: tensor {name!r} has dtype {dtype_name}, which tuner cannot load")
    nbytes = math.prod(shape) * dtype.itemsize
    if end - begin != nbytes or begin < 0 or data_start + end > size:
        raise ModelLoadError(
            f"{path}: tensor {name!r} lies outside the file or has the wrong size; the file is truncated or "
            "corrupt (download it again)"
        )
    return StoredTensor(dtype=dtype, shape=shape, offset=data_start + begin, nbytes=nbytes)


def read_tensor(handle: BinaryIO, stored: StoredTensor, path: Path) -> torch.Tensor:
    """Read one tensor into new CPU memory with ``readinto`` (no memory map, no intermediate copy)."""
    tensor = torch.empty(stored.shape, dtype=stored.dtype)
    if stored.nbytes == 0:
        return tensor
    # a writable view of the tensor's own memory, so the file is read straight into it
    buffer = memoryview((ctypes.c_char * stored.nbytes).from_address(tensor.data_ptr())).cast("B")
    handle.seek(stored.offset)
    done = 0
    while done < stored.nbytes:
        count = handle.readinto(buffer[done:])
        if not count:
            raise ModelLoadError(f"{path}: file ended while reading a tensor; it is truncated")
        done += count
    return tensor
