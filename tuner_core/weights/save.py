"""Writing weight files atomically, so a killed process never leaves a half-written checkpoint."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tuner_core.atomic import atomic_write
from tuner_core.cache.store import atomic_write_safetensors


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``tensors`` as one safetensors file via a temporary file and a rename; return the path."""
    path = Path(path)
    # No metadata block at all for empty metadata (the cache writer keeps an empty one).
    atomic_write_safetensors(path, tensors, dict(metadata) if metadata else None)
    return path


def save_json(data: Any, path: str | Path) -> Path:
    """Write ``data`` as indented JSON via a temporary file and a rename; return the path."""
    path = Path(path)
    with atomic_write(path) as temp, open(temp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
    return path


def save_sharded_safetensors(
    tensors: Mapping[str, torch.Tensor],
    directory: str | Path,
    *,
    num_shards: int,
    stem: str = "model",
    metadata: Mapping[str, str] | None = None,
) -> tuple[list[Path], Path]:
    """Split ``tensors`` into ``num_shards`` files named ``<stem>-0000N-of-0000M.safetensors`` plus
    ``<stem>.safetensors.index.json`` (the Hugging Face layout), balancing bytes in stored key order.

    :returns: the shard paths and the index path.
    """
    if num_shards < 1 or num_shards > len(tensors):
        raise ValueError(f"num_shards must be between 1 and the number of tensors ({len(tensors)})")
    directory = Path(directory)
    items = list(tensors.items())
    sizes = [t.numel() * t.element_size() for _, t in items]
    total = sum(sizes)
    groups: list[list[tuple[str, torch.Tensor]]] = []
    start, done = 0, 0
    for shard in range(num_shards):
        left = num_shards - shard - 1  # shards after this one, each needing at least one tensor
        end = start + 1
        done += sizes[start]
        while end < len(items) - left and (
            left == 0 or done + sizes[end] <= total * (shard + 1) / num_shards
        ):
            done += sizes[end]
            end += 1
        groups.append(items[start:end])
        start = end
    paths = []
    weight_map = {}
    for g, group in enumerate(groups):
        name = f"{stem}-{g + 1:05d}-of-{num_shards:05d}.safetensors"
        paths.append(save_safetensors(dict(group), directory / name, metadata))
        weight_map.update({key: name for key, _ in group})
    index = save_json(
        {"metadata": {"total_size": total}, "weight_map": weight_map},
        directory / f"{stem}.safetensors.index.json",
    )
    return paths, index
