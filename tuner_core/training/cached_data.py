"""Training data from caches: find each dataset's cache files, group equal shapes, batch them per epoch.

Items are read lazily through safetensors' memory map. The batch order of an epoch is a pure function of
(seed, epoch), so a resumed run sees exactly the batches the interrupted one would have seen.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch.utils.data import Dataset, Sampler

from tuner_core.architecture import Architecture
from tuner_core.cache.store import load_tensors, read_header
from tuner_core.config.dataset import DatasetConfig
from tuner_core.errors import ConfigError, DataError
from tuner_core.plugins import Plugins

log = logging.getLogger(__name__)


@attrs.frozen
class CachedItem:
    """One training element: a latent cache and its text cache, with the shapes that decide batching."""

    latent_path: Path
    text_path: Path
    dataset_index: int
    signature: tuple[Any, ...]


def find_cached_items(config: DatasetConfig, architecture: Architecture, options: Any) -> list[CachedItem]:
    """Every usable cached item of every dataset; unreadable or unmatched files are reported and skipped."""
    items: list[CachedItem] = []
    for ds in config.datasets:
        directory = ds.cache_directory
        names = sorted(p.name for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []
        latent_names = [n for n in names if architecture.is_latent_cache(n)]
        if not latent_names:
            log.warning("%s: no latent caches in %s (run `tuner cache-latents` first)", ds.table, directory)
            continue
        for name in latent_names:
            latent_path = directory / name
            text_path = directory / architecture.text_cache_for(name)
            try:
                latent_header = read_header(latent_path)
            except (OSError, ValueError) as exc:
                log.warning("skipping unreadable cache %s: %s", latent_path, exc)
                continue
            if not text_path.exists():
                log.warning(
                    "skipping %s: its text cache %s is missing (run `tuner cache-text`)",
                    latent_path,
                    text_path.name,
                )
                continue
            try:
                text_header = read_header(text_path)
            except (OSError, ValueError) as exc:
                log.warning("skipping %s: unreadable text cache %s: %s", latent_path, text_path, exc)
                continue
            architecture.validate_cache(latent_path, latent_header, options, ds.extra)
            signature = (ds.index, tuple(sorted(latent_header.items())), tuple(sorted(text_header.items())))
            items.append(CachedItem(latent_path, text_path, ds.index, signature))
    if not items:
        raise DataError(
            f"{config.path}: no cached item to train on; run `tuner cache-latents` and `tuner cache-text` "
            "with this dataset config first"
        )
    return items


class CachedItemsDataset(Dataset):
    """Map-style dataset: index -> the architecture's tensors for one cached item."""

    def __init__(self, items: Sequence[CachedItem], architecture: Architecture, plugins: Plugins) -> None:
        self.items = list(items)
        self.architecture = architecture
        self.plugins = plugins  # pickled into spawned workers (the manager is rebuilt there)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.items[index]
        try:
            latents = load_tensors(item.latent_path)
            text = load_tensors(item.text_path)
        except Exception as exc:  # the header was fine when listed; the data region may not be
            raise DataError(f"cannot read cache {item.latent_path} / {item.text_path.name}: {exc}") from exc
        return self.plugins.hook.tuner_batch_item(
            architecture=self.architecture, latent_tensors=latents, text_tensors=text
        )


def stack_batch(elements: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack equal-shaped elements into one batch (``collate_fn``)."""
    return {key: torch.stack([e[key] for e in elements]) for key in elements[0]}


class EpochBatches(Sampler[list[int]]):
    """Yields this process's batches of item indices for the current epoch.

    Items of one dataset with equal tensor shapes form a group; each group is repeated ``num_repeats``
    times, shuffled, and cut into ``batch_size`` batches; all batches are then shuffled together. Every
    process sees the same list and takes every ``world_size``-th batch; the list is cut to a multiple of
    ``world_size`` so all processes run the same number of steps.
    """

    def __init__(
        self,
        items: Sequence[CachedItem],
        batch_sizes: Sequence[int],
        num_repeats: Sequence[int],
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.items = list(items)
        self.batch_sizes = list(batch_sizes)
        self.num_repeats = list(num_repeats)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0
        if self.batches_per_epoch() == 0:
            raise DataError(
                f"the dataset yields {len(self.epoch_batches(0))} batches per epoch, fewer than the "
                f"{world_size} processes; add data or lower the batch size"
            )

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` (every process), as a pure function of seed and epoch."""
        rng = random.Random(f"{self.seed}:{epoch}")
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, item in enumerate(self.items):
            groups.setdefault(item.signature, []).append(index)
        batches: list[list[int]] = []
        for signature in sorted(groups, key=repr):
            dataset = signature[0]
            members = groups[signature] * self.num_repeats[dataset]
            rng.shuffle(members)
            size = self.batch_sizes[dataset]
            batches += [members[i : i + size] for i in range(0, len(members), size)]
        rng.shuffle(batches)
        return batches[: len(batches) - len(batches) % self.world_size]

    def batches_per_epoch(self) -> int:
        """Batches each process runs per epoch."""
        return len(self.epoch_batches(0)) // self.world_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch to iterate, skipping its first ``start`` batches (for resume)."""
        self.epoch = epoch
        self.start = start

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.epoch_batches(self.epoch)[self.rank :: self.world_size]
        return iter(mine[self.start :])

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start


def batch_settings(config: DatasetConfig) -> tuple[list[int], list[int]]:
    """Per-dataset ``batch_size`` and ``num_repeats`` (indexable by dataset index)."""
    if not config.datasets:
        raise ConfigError(f"{config.path}: no dataset")
    return [d.keys.batch_size for d in config.datasets], [d.keys.num_repeats for d in config.datasets]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def data_loader_workers(requested: int) -> int:
    """``--max_data_loader_n_workers`` capped at :func:`available_cpus`.

    More worker processes than CPUs only compete for them (and torch warns that the loader may freeze).
    """
    cpus = available_cpus()
    if requested > cpus:
        log.debug("data-loader workers: %d requested, capped at the %d CPUs available", requested, cpus)
        return cpus
    return requested
