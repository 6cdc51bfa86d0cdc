"""What a weights file really holds, told from its first bytes rather than its name.

A renamed text file (a Git LFS pointer, a saved web page, a note) or an empty download otherwise reaches
``torch.load`` or the safetensors parser and fails with a message about pickles or header lengths. Torch
checkpoints are zip archives (``PK\\x03\\x04``) or, from before PyTorch 1.6, pickles (``\\x80`` and a protocol
number); a safetensors file starts with an 8-byte little-endian header length and then ``{``.
"""

from __future__ import annotations

import struct
from pathlib import Path

from tuner_core.errors import ModelLoadError

TORCH_ZIP = "torch zip"
TORCH_PICKLE = "torch pickle"
SAFETENSORS = "safetensors"

#: Header lengths above this are not safetensors (the format's own limit is 100 MB).
MAX_HEADER_BYTES = 100_000_000
#: How much of a file is read to tell what it is.
SNIFF_BYTES = 256
#: What to pass instead, for messages.
EXPECTED_FILES = "a .safetensors file, or a .pt/.pth/.bin/.ckpt file written by torch.save"


def _start(path: Path) -> tuple[bytes, int]:
    """The first bytes of ``path`` and its size."""
    try:
        with open(path, "rb") as handle:
            return handle.read(SNIFF_BYTES), path.stat().st_size
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot open: {exc}") from exc


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= min(MAX_HEADER_BYTES, size - 8) and head[8:9] == b"{"


def sniff_format(path: str | Path) -> str | None:
    """:data:`TORCH_ZIP`, :data:`TORCH_PICKLE` or :data:`SAFETENSORS` by content; ``None`` for anything else.

    :raises ModelLoadError: if the file cannot be opened.
    """
    head, size = _start(Path(path))
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return TORCH_ZIP
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return TORCH_PICKLE
    if _looks_like_safetensors(head, size):
        return SAFETENSORS
    return None


def _as_text(head: bytes) -> str | None:
    """``head`` decoded, when it is printable UTF-8 text (a character cut at the end is allowed)."""
    for cut in range(4):  # a multi-byte character may straddle the end of what was read
        try:
            text = head[: len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return None
    return text if text and all(c.isprintable() or c in "\t\r\n\f" for c in text) else None


def describe_start(path: str | Path) -> str:
    """What ``path`` looks like, for a message: "it is empty", "it starts with text '...'", "it is a PyTorch
    checkpoint"... (one lower-case clause)."""
    path = Path(path)
    head, size = _start(path)
    if size == 0:
        return "it is empty, 0 bytes: the download or copy did not finish"
    kind = sniff_format(path)
    if kind in (TORCH_ZIP, TORCH_PICKLE):
        return "it is a PyTorch checkpoint"
    if kind == SAFETENSORS:
        return "it is a safetensors file"
    text = _as_text(head)
    if text is None:
        return "it starts with the bytes " + head[:8].hex(" ")
    if text.startswith("version https://git-lfs"):
        return "it is a Git LFS pointer, not the weights: fetch the real file (git lfs pull)"
    if text.lstrip().lower().startswith(("<!doctype html", "<html")):
        return "it is a web page (HTML), not the weights: download the file itself"
    first = text.strip().splitlines()[0] if text.strip() else ""
    snippet = first[:40] + ("..." if len(first) > 40 else "")
    return f"it starts with text {snippet!r}"


def not_a_checkpoint(path: str | Path) -> ModelLoadError:
    """The error for a file that is neither a PyTorch checkpoint nor safetensors, saying what it is."""
    return ModelLoadError(
        f"{path}: not a PyTorch checkpoint or safetensors file ({describe_start(path)}). "
        f"Pass the model's weights: {EXPECTED_FILES}."
    )
