"""Run one architecture command from validated options (what the CLI calls after parsing)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from tuner_core.architecture import Architecture
from tuner_core.commands.cache_latents import cache_latents
from tuner_core.commands.cache_text import cache_text
from tuner_core.commands.generate import run_generate
from tuner_core.commands.preflight import preflight
from tuner_core.commands.result import CommandResult
from tuner_core.commands.train import run_train
from tuner_core.plugins import Plugins
from tuner_core.sampling.request import SampleRequest

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
    *,
    architecture: Architecture,
    plugins: Plugins,
    jobs: Iterable[SampleRequest] | None = None,
) -> CommandResult:
    """Run ``command`` (``"train"``, ``"cache-latents"``, ...) with validated options.

    :param options: an instance of the command's options class
        (:func:`tuner_core.commands.options_class`), e.g. ``FramePackTrainOptions`` for ``train``.
    :param jobs: ``generate`` only: the requests to generate one at a time, models kept loaded between
        them (the CLI's ``--interactive`` passes the prompts typed at its terminal); see
        :func:`~tuner_core.commands.generate.run_generate`.

    Pre-flight runs first: every check that needs no model, all problems in one :class:`ConfigError`.
    """
    if jobs is not None and command != "generate":
        raise TypeError(f"run_command: jobs are for generate, not {command}")
    preflight(command, options, architecture, plugins)
    if jobs is not None:
        return RUNNERS[command](options, architecture=architecture, plugins=plugins, jobs=jobs)
    return RUNNERS[command](options, architecture=architecture, plugins=plugins)
