"""Shared fixtures: plugin managers built per test (tuner has no global plugin state)."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start without the plugin-selection environment variables of the developer's shell."""
    monkeypatch.delenv("TUNER_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("TUNER_STRICT_PLUGINS", raising=False)
