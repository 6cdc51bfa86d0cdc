"""Run one architecture command from validated options (what the CLI calls after parsing)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from tuner_core.architecture import Architecture
from tuner_core.config.dataset import load_dataset_config
from tuner_core.errors import NotAvailableError
from tuner_core.plugins import Plugins


@attrs.frozen
class CommandResult:
    """What a command produced: files by kind, and counts worth reporting."""

    command: str
    outputs: dict[str, list[Path]] = attrs.field(factory=dict)
    counts: dict[str, int] = attrs.field(factory=dict)

    def summary(self) -> list[str]:
        """Human-readable lines for the CLI's closing message."""
        lines = (
            [f"{self.command}: " + ", ".join(f"{k}: {v}" for k, v in self.counts.items())]
            if self.counts
            else []
        )
        for kind, paths in self.outputs.items():
            lines += [f"{kind}: {p}" for p in paths]
        return lines


Runner = Callable[..., CommandResult]


def _not_yet(piece: str) -> Runner:
    def run(options: Any, _arch_options: Any, *, architecture: Architecture, **_kwargs: Any) -> CommandResult:
        dataset_config = getattr(options, "dataset_config", None)
        if dataset_config is not None:  # validate the dataset too, so the user can fix it now
            load_dataset_config(dataset_config, architecture.dataset_options)
        raise NotAvailableError(
            f"{piece} is not implemented yet in this version of tuner; options were validated"
        )

    return run


RUNNERS: dict[str, Runner] = {
    "cache-latents": _not_yet("latent caching (the media reader and cache store)"),
    "cache-text": _not_yet("text caching (the cache store)"),
    "train": _not_yet("the training engine"),
    "generate": _not_yet("video generation"),
}


def run_command(
    command: str,
    options: Any,
    arch_options: Any,
    *,
    architecture: Architecture,
    plugins: Plugins,
) -> CommandResult:
    """Run ``command`` (``"train"``, ``"cache-latents"``, ...) with validated options."""
    return RUNNERS[command](options, arch_options, architecture=architecture, plugins=plugins)
