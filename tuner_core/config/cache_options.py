"""Core options of ``tuner cache-latents`` and ``tuner cache-text``."""

from __future__ import annotations

from pathlib import Path

import attrs

from tuner_core.options import at_least, option

DATA = "data"


@attrs.frozen(kw_only=True)
class CacheOptions:
    """Options shared by both cache commands."""

    dataset_config: Path = option(
        help="Dataset TOML (or JSON) file describing the media to cache.", group=DATA
    )
    device: str | None = option(None, help="Device to encode on (default: cuda if available, else cpu).")
    batch_size: int | None = option(
        None, help="Items encoded at once; overrides the dataset's batch_size.", validator=at_least(1)
    )
    num_workers: int | None = option(
        None,
        help="Worker threads decoding media (default: number of CPUs, at most 8).",
        validator=at_least(0),
    )
    skip_existing: bool = option(False, help="Skip items whose cache files exist and are up to date.")
    keep_cache: bool = option(
        False, help="Keep cache files that belong to no current dataset item (default: remove them)."
    )


@attrs.frozen(kw_only=True)
class CacheLatentsOptions(CacheOptions):
    """Core options of ``tuner cache-latents``."""


@attrs.frozen(kw_only=True)
class CacheTextOptions(CacheOptions):
    """Core options of ``tuner cache-text``."""
