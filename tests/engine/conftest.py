"""Fixtures for the engine tests: a generated toy dataset and toy models, built once per module."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from tuner_toy.build import make_toy_models
from tuner_toy.sample_data import make_sample_dataset


@attrs.frozen
class ToyWorkspace:
    root: Path
    dataset: Path
    vae: Path
    text_encoder: Path
    dit: Path

    @property
    def cache(self) -> Path:
        return self.root / "cache"


def make_workspace(root: Path, *, videos: int = 6, frames: int = 9) -> ToyWorkspace:
    dataset = make_sample_dataset(root, videos=videos, frames=frames, size=32)
    files = make_toy_models(root / "models")
    return ToyWorkspace(root, dataset, files.vae, files.text_encoder, files.dit)


@pytest.fixture
def toy(tmp_path: Path) -> ToyWorkspace:
    """A fresh workspace per test (a few hundred milliseconds)."""
    return make_workspace(tmp_path)
