"""Run one architecture command from validated options (what the CLI calls after parsing)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tuner_core.architecture import Architecture
from tuner_core.commands.cache_latents import cache_latents
from tuner_core.commands.cache_text import cache_text
from tuner_core.commands.generate import run_generate
from tuner_core.commands.preflight import preflight
from tuner_core.commands.result import CommandResult
from tuner_core.commands.train import run_train
from tuner_core.options import CommandOptions
from tuner_core.plugins import Plugins

Runner = Callable[..., CommandResult]


RUNNERS: dict[str, Runner] = {
    "cache-latents": cache_latents,
    "cache-text": cache_text,
    "train": run_train,
    "generate": run_generate,
}


def run_command(
    command: str,
    options: Any,
    arch_options: Any,
    *,
    architecture: Architecture,
    plugins: Plugins,
) -> CommandResult:
    """Run ``command`` (``"train"``, ``"cache-latents"``, ...) with validated options.

    Pre-flight runs first: every check that needs no model, all problems in one :class:`ConfigError`.
    """
    preflight(command, CommandOptions(options, arch_options), architecture, plugins)
    return RUNNERS[command](options, arch_options, architecture=architecture, plugins=plugins)
