"""``file_identity`` (weights files, for cache identities) and ``source_identity`` (media sources) keep the
strings earlier caches were stamped with, so those caches stay fresh."""

from __future__ import annotations

from tuner_core.cache.store import source_identity
from tuner_core.weights import file_identity


def test_file_identity_of_a_file_a_snapshot_directory_and_none(tmp_path):
    weights = tmp_path / "vae.safetensors"
    weights.write_bytes(b"12345")
    st = weights.stat()
    assert file_identity(weights) == f"{weights.resolve()}:5:{st.st_mtime_ns}"
    assert file_identity(str(weights)) == file_identity(weights)
    assert file_identity(None) == "-"
    snapshot = tmp_path / "snapshot"
    (snapshot / "sub").mkdir(parents=True)
    (snapshot / "b.json").write_text("{}")
    (snapshot / "sub" / "a.bin").write_bytes(b"abc")
    entries = [
        f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        for p in (snapshot / "b.json", snapshot / "sub" / "a.bin")
    ]
    assert file_identity(snapshot) == ";".join(entries)  # every file, recursively, in sorted order


def test_source_identity_leaves_the_location_out(tmp_path):
    video = tmp_path / "a.mp4"
    video.write_bytes(b"1234")
    assert source_identity(video) == f"4:{video.stat().st_mtime_ns}"
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "0.png").write_bytes(b"12")
    (frames / "1.png").write_bytes(b"345")
    newest = max(p.stat().st_mtime_ns for p in frames.iterdir())
    assert source_identity(frames) == f"dir:2:5:{newest}"
