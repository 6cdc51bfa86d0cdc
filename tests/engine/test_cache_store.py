"""The cache store: atomic writes survive a kill, stale caches are redone, orphans are removed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import torch

from tuner_core.cache.record import CacheRecord
from tuner_core.cache.store import (
    FINGERPRINT_KEY,
    CacheStatus,
    load_tensors,
    read_header,
    read_metadata,
    remove_temp_files,
    status,
    write_record,
)

from .helpers import cache_all, run

KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import torch
    import safetensors.torch as st
    from tuner_core.cache import store
    from tuner_core.cache.record import CacheRecord

    mode = sys.argv[2]
    real_save = st.save_file

    def save_half_then_die(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        size = os.path.getsize(filename)
        with open(filename, "r+b") as handle:
            handle.truncate(size // 2)  # the process dies while the data is half on disk
        os.kill(os.getpid(), signal.SIGKILL)

    def die_before_rename(src, dst):
        os.kill(os.getpid(), signal.SIGKILL)

    if mode == "mid-write":
        store.save_file = save_half_then_die
    else:
        store.os.replace = die_before_rename
    record = CacheRecord("item.safetensors", {"x": torch.full((1000,), 2.0)})
    store.write_record(Path(sys.argv[1]), record, "new")
    """
)


def test_kill_mid_write_leaves_the_previous_file(tmp_path):
    write_record(tmp_path, CacheRecord("item.safetensors", {"x": torch.full((1000,), 1.0)}), "old")
    for mode in ("mid-write", "before-rename"):
        result = subprocess.run([sys.executable, "-c", KILLER, str(tmp_path), mode], capture_output=True)
        assert result.returncode == -9, result.stderr.decode()
        assert torch.equal(load_tensors(tmp_path / "item.safetensors")["x"], torch.full((1000,), 1.0))
        assert read_metadata(tmp_path / "item.safetensors")[FINGERPRINT_KEY] == "old"
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers  # the killed runs left temp files behind ...
    assert not any(p.name.endswith(".safetensors") for p in leftovers)  # ... that no cache glob matches
    assert remove_temp_files(tmp_path, older_than_s=3600) == 0  # a running writer's file is left alone
    os.utime(leftovers[0], (time.time() - 7200, time.time() - 7200))
    assert remove_temp_files(tmp_path, older_than_s=3600) == 1


def test_status_of_missing_fresh_stale_foreign_and_corrupt(tmp_path):
    path = write_record(tmp_path, CacheRecord("a.safetensors", {"x": torch.zeros(2)}), "fp1")
    assert status(path, "fp1") is CacheStatus.FRESH
    assert status(path, "fp2") is CacheStatus.STALE
    assert status(tmp_path / "none.safetensors", "fp1") is CacheStatus.MISSING
    from safetensors.torch import save_file

    save_file(
        {"x": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"), metadata={"architecture": "framepack"}
    )
    assert status(tmp_path / "foreign.safetensors", "fp1") is CacheStatus.FOREIGN
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert status(tmp_path / "corrupt.safetensors", "fp1") is CacheStatus.CORRUPT


def test_header_reading_detects_truncation(tmp_path):
    path = write_record(tmp_path, CacheRecord("a.safetensors", {"x": torch.zeros(100)}), "fp")
    assert read_header(path) == {"x": ("F32", (100,))}
    path.write_bytes(path.read_bytes()[:-10])
    try:
        read_header(path)
    except ValueError as exc:
        assert "truncated" in str(exc)
    else:
        raise AssertionError("a truncated file must not read")


def test_touching_a_source_redoes_its_cache_and_skip_existing_keeps_fresh_ones(toy):
    cache_all(toy)
    first = run("cache-latents", {"dataset_config": toy.dataset, "vae": toy.vae, "skip_existing": True})
    assert first.counts["encoded"] == 0 and first.counts["up to date"] == 6
    video = sorted((toy.root / "videos").glob("*.mp4"))[0]
    stamp = time.time() + 5
    os.utime(video, (stamp, stamp))
    again = run("cache-latents", {"dataset_config": toy.dataset, "vae": toy.vae, "skip_existing": True})
    assert again.counts == {"encoded": 1, "up to date": 5, "skipped": 0, "removed": 0}
    # a changed caption makes the text cache stale
    caption = video.with_suffix(".txt")
    caption.write_text("a purple square", encoding="utf-8")
    text = run(
        "cache-text", {"dataset_config": toy.dataset, "text_encoder": toy.text_encoder, "skip_existing": True}
    )
    assert text.counts["encoded"] == 1 and text.counts["up to date"] == 5


def test_caches_of_removed_items_are_deleted_unless_keep_cache(toy):
    cache_all(toy)
    video = sorted((toy.root / "videos").glob("*.mp4"))[0]
    video.unlink()
    kept = run(
        "cache-latents",
        {"dataset_config": toy.dataset, "vae": toy.vae, "skip_existing": True, "keep_cache": True},
    )
    assert kept.counts["removed"] == 0
    assert any(p.name.startswith(video.stem) for p in toy.cache.iterdir())
    removed = run("cache-latents", {"dataset_config": toy.dataset, "vae": toy.vae, "skip_existing": True})
    assert removed.counts["removed"] == 1
    assert not any(
        p.name.startswith(video.stem) and p.name.endswith("_toy.safetensors") for p in toy.cache.iterdir()
    )


def test_foreign_cache_is_reused_with_skip_existing(toy):
    cache_all(toy)
    path = sorted(toy.cache.glob("*_toy.safetensors"))[0]
    tensors = load_tensors(path)
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"architecture": "toy"})  # as another tool would have written it
    result = run("cache-latents", {"dataset_config": toy.dataset, "vae": toy.vae, "skip_existing": True})
    assert result.counts["encoded"] == 0
    assert FINGERPRINT_KEY not in read_metadata(path)
