"""Saved files of a run: weights (epoch / step / final), resumable state directories, and retention.

Names follow the reference tool: ``{name}-{epoch:06d}.safetensors``, ``{name}-step{step:08d}.safetensors``,
``{name}.safetensors``, and ``...-state`` directories beside them. Every file and directory appears
atomically: a killed run leaves either the previous save or the complete new one.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from tuner_core.atomic import fsync_directory, temp_path
from tuner_core.cache.store import atomic_write_safetensors

log = logging.getLogger(__name__)

SAVE_DTYPES = {"float": torch.float32, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def weights_name(output_name: str, *, epoch: int | None = None, step: int | None = None) -> str:
    """File name of a weights save: per epoch, per step, or final (neither)."""
    if epoch is not None:
        return f"{output_name}-{epoch:06d}.safetensors"
    if step is not None:
        return f"{output_name}-step{step:08d}.safetensors"
    return f"{output_name}.safetensors"


def state_name(output_name: str, *, epoch: int | None = None, step: int | None = None) -> str:
    """Directory name of a state save (the weights name with ``-state`` instead of the extension)."""
    return weights_name(output_name, epoch=epoch, step=step).removesuffix(".safetensors") + "-state"


def save_weights(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], precision: str | None
) -> Path:
    """Write weights atomically, cast to ``precision`` (``fp32`` when ``None``; integer tensors untouched)."""
    dtype = SAVE_DTYPES[precision or "fp32"]
    cast = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
    atomic_write_safetensors(path, cast, metadata)
    return path


def _numbered(directory: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    found = []
    for path in directory.iterdir() if directory.is_dir() else ():
        match = pattern.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def prune(directory: Path, output_name: str, *, kind: str, keep: int | None, state: bool) -> list[Path]:
    """Delete all but the newest ``keep`` epoch saves (``kind="epoch"``) or step saves (``kind="step"``)."""
    if not keep:
        return []
    number = r"(\d{6})" if kind == "epoch" else r"step(\d{8})"
    suffix = r"-state" if state else r"\.safetensors"
    saves = _numbered(directory, re.compile(re.escape(output_name) + "-" + number + suffix))
    removed = [path for _, path in saves[: max(len(saves) - keep, 0)]]
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        log.info("removed old save %s", path.name)
    return removed


def atomic_directory(final: Path) -> Path:
    """A fresh temporary directory beside ``final``; pass it to :func:`commit_directory` when complete."""
    temp = temp_path(final)
    temp.mkdir(parents=True)
    return temp


def commit_directory(temp: Path, final: Path) -> None:
    """Move a completed temporary directory into place, replacing an older ``final``."""
    old = None
    if final.exists():
        old = temp_path(final, ".old")
        os.replace(final, old)
    os.replace(temp, final)
    fsync_directory(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
