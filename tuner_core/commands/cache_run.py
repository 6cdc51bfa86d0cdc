"""What ``cache-latents`` and ``cache-text`` share: options, device, encoder identity, discovery, counts."""

from __future__ import annotations

from collections.abc import Iterator

import attrs
import torch

from tuner_core.architecture import Architecture
from tuner_core.cache.store import CacheStatus, remove_temp_files
from tuner_core.components import Components
from tuner_core.config.cache_options import CacheOptions
from tuner_core.config.dataset import DatasetConfig, DatasetSettings, load_dataset_config
from tuner_core.data.discovery import DiscoveryResult, discover_items
from tuner_core.plugins import Plugins

#: Cache states ``--skip_existing`` keeps: written by this identity, or by another tool (no fingerprint).
REUSABLE = (CacheStatus.FRESH, CacheStatus.FOREIGN)


def resolve_device(name: str | None) -> torch.device:
    """``--device``, or cuda when available, else cpu."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@attrs.define
class CacheRun:
    """One run of a cache command: validated options, the dataset config and what was done so far."""

    command: str
    options: CacheOptions
    architecture: Architecture
    config: DatasetConfig
    identity: str
    counts: dict[str, int] = attrs.field(
        factory=lambda: {"encoded": 0, "up to date": 0, "skipped": 0, "removed": 0}
    )

    @classmethod
    def start(cls, command: str, options: CacheOptions, architecture: Architecture) -> CacheRun:
        """Load the dataset config and the architecture's encoder identity for ``command``."""
        config = load_dataset_config(options.dataset_config, architecture.dataset_options)
        return cls(command, options, architecture, config, architecture.cache_identity(command, options))

    def discovered(self) -> Iterator[tuple[DatasetSettings, DiscoveryResult]]:
        """Each dataset with its items (bad media counted as skipped; killed runs' temp files removed)."""
        for ds in self.config.datasets:
            found = discover_items(ds, self.architecture.media)
            self.counts["skipped"] += len(found.skipped)
            remove_temp_files(ds.cache_directory)
            yield ds, found

    def load_models(self, plugins: Plugins) -> Components:
        """The components the architecture encodes with, on ``--device``, loaded before the first batch."""
        names = self.architecture.components(self.command, self.options)
        components = Components(
            self.architecture, plugins, self.options, resolve_device(self.options.device), names
        )
        for name in names:
            components.load(name)
        return components
