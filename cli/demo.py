"""``tuner demo``: the end-to-end path on a generated sample dataset."""

from __future__ import annotations

from pathlib import Path

from tuner_core.errors import NotAvailableError
from tuner_core.plugins import Plugins


def run_demo(plugins: Plugins, output_dir: Path | None) -> int:
    """Run the demo; returns the exit code."""
    raise NotAvailableError("the demo needs the training engine, which is not implemented yet")
