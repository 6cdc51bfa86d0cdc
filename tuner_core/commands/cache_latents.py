"""``tuner cache-latents``: decode every dataset item, encode it with the architecture, write its caches."""

from __future__ import annotations

import logging
import sys
from concurrent.futures import ThreadPoolExecutor

import torch
from tqdm.auto import tqdm

from tuner_core.architecture import Architecture
from tuner_core.cache.store import (
    CacheStatus,
    fingerprint,
    remove_orphans,
    source_identity,
    status,
    write_record,
)
from tuner_core.commands.cache_run import REUSABLE, CacheRun
from tuner_core.commands.result import CommandResult
from tuner_core.config.cache_options import CacheLatentsOptions
from tuner_core.data.batches import caching_batches
from tuner_core.data.items import MediaItem, MediaSample
from tuner_core.data.loader import load_sample
from tuner_core.errors import DataError
from tuner_core.plugins import Plugins

log = logging.getLogger(__name__)


def item_fingerprint(item: MediaItem, architecture: Architecture, identity: str) -> str:
    """Everything that decides a latent cache's content: source file, bucket, frames, encoder, plugin version."""
    return fingerprint(
        {
            "source": source_identity(item.source),
            "controls": [source_identity(p) for p in item.control_sources],
            "original_size": item.original_size,
            "bucket": item.bucket,
            "frames": item.frame_indices,
            "source_fps": item.source_fps,
            "control_buckets": item.control_buckets,
            "dataset_options": repr(item.dataset_options),
            "architecture": architecture.name,
            "cache_version": architecture.cache_version,
            "encoder": identity,
        }
    )


def _load(item: MediaItem, architecture: Architecture) -> MediaSample | None:
    try:
        return load_sample(item, architecture.media)
    except DataError as exc:  # the message names the file
        log.warning("skipping: %s", exc)
        return None


def cache_latents(
    options: CacheLatentsOptions, *, architecture: Architecture, plugins: Plugins
) -> CommandResult:
    """Encode every item of ``options.dataset_config`` into latent caches; returns counts."""
    run = CacheRun.start("cache-latents", options, architecture)
    identity, counts = run.identity, run.counts
    plans = []
    for ds, found in run.discovered():
        expected: set[str] = set()
        todo = []
        for item in found.items:
            try:
                names = architecture.latent_cache_names(item, options)
            except DataError as exc:  # e.g. a clip shorter than one section
                log.warning("skipping %s: %s", item.source, exc)
                counts["skipped"] += 1
                continue
            expected.update(names)
            fp = item_fingerprint(item, architecture, identity)
            states = [status(ds.cache_directory / n, fp) for n in names]
            if options.skip_existing and all(s in REUSABLE for s in states):
                counts["up to date"] += 1
                continue
            if CacheStatus.STALE in states:
                log.info("re-encoding %s: its cache is stale", item.source)
            todo.append((item, fp))
        plans.append((ds, todo, expected))

    total = sum(len(todo) for _, todo, _ in plans)
    if total:
        models = run.load_models(plugins)
        workers = options.num_workers if options.num_workers is not None else min(8, torch.get_num_threads())
        with (
            ThreadPoolExecutor(max(workers, 1)) as pool,
            tqdm(total=total, desc="latents", file=sys.stderr, dynamic_ncols=True) as bar,
        ):
            for ds, todo, _ in plans:
                fingerprints = {id(item): fp for item, fp in todo}
                batch_size = options.batch_size or ds.keys.batch_size
                for batch in caching_batches([item for item, _ in todo], batch_size):
                    samples = [s for s in pool.map(lambda i: _load(i, architecture), batch) if s is not None]
                    counts["skipped"] += len(batch) - len(samples)
                    if samples:
                        with torch.no_grad():
                            records = plugins.hook.tuner_encode_latents(
                                architecture=architecture, samples=samples, models=models, options=options
                            )
                        for sample, item_records in zip(samples, records):
                            for record in item_records:
                                write_record(ds.cache_directory, record, fingerprints[id(sample.item)])
                            counts["encoded"] += 1
                    bar.update(len(batch))
    if not options.keep_cache:
        for ds, _, expected in plans:
            counts["removed"] += len(
                remove_orphans(ds.cache_directory, expected, architecture.is_latent_cache)
            )
    return CommandResult("cache-latents", counts=counts)
