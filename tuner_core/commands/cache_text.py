"""``tuner cache-text``: encode every dataset item's caption with the architecture's text encoders."""

from __future__ import annotations

import logging
import sys

import torch
from tqdm.auto import tqdm

from tuner_core.architecture import Architecture
from tuner_core.cache.record import CacheRecord
from tuner_core.cache.store import (
    CacheStatus,
    fingerprint,
    remove_orphans,
    status,
    write_record,
)
from tuner_core.commands.cache_run import REUSABLE, CacheRun
from tuner_core.commands.result import CommandResult
from tuner_core.config.cache_options import CacheTextOptions
from tuner_core.plugins import Plugins

log = logging.getLogger(__name__)


def cache_text(options: CacheTextOptions, *, architecture: Architecture, plugins: Plugins) -> CommandResult:
    """Encode the caption of every item of ``options.dataset_config`` into text caches; returns counts."""
    run = CacheRun.start("cache-text", options, architecture)
    identity, counts = run.identity, run.counts
    plans = []
    for ds, found in run.discovered():
        captions: dict[str, str] = {}  # one text cache per source: the clips of a video share it
        for item in found.items:
            captions.setdefault(architecture.text_cache_name(item), item.caption)
        todo = []
        for name, caption in captions.items():
            fp = fingerprint(
                {
                    "caption": caption,
                    "architecture": architecture.name,
                    "cache_version": architecture.cache_version,
                    "encoder": identity,
                }
            )
            state = status(ds.cache_directory / name, fp)
            if options.skip_existing and state in REUSABLE:
                counts["up to date"] += 1
                continue
            if state is CacheStatus.STALE:
                log.info("re-encoding the caption of %s: its cache is stale", name)
            todo.append((name, caption, fp))
        plans.append((ds, todo, set(captions)))

    total = sum(len(todo) for _, todo, _ in plans)
    if total:
        models = run.load_models(plugins)
        with tqdm(total=total, desc="captions", file=sys.stderr, dynamic_ncols=True) as bar:
            for ds, todo, _ in plans:
                size = options.batch_size or ds.keys.batch_size
                for start in range(0, len(todo), size):
                    chunk = todo[start : start + size]
                    with torch.no_grad():
                        encoded = plugins.hook.tuner_encode_text(
                            architecture=architecture,
                            captions=[c for _, c, _ in chunk],
                            models=models,
                            options=options,
                        )
                    for (name, caption, fp), tensors in zip(chunk, encoded):
                        record = CacheRecord(name, tensors, architecture.text_cache_metadata(caption))
                        write_record(ds.cache_directory, record, fp)
                        counts["encoded"] += 1
                    bar.update(len(chunk))
    if not options.keep_cache:
        for ds, _, expected in plans:
            counts["removed"] += len(remove_orphans(ds.cache_directory, expected, architecture.is_text_cache))
    return CommandResult("cache-text", counts=counts)
