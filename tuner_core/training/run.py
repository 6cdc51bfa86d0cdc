"""The state of a training run that lifecycle hooks and callbacks see."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs


@attrs.define
class TrainingRun:
    """A training run in progress.

    :param options: the validated core training options.
    :param arch_options: the architecture's own validated options.
    :param architecture: the architecture being trained.
    :param output_dir: where weights, states, samples and logs go.
    :param is_main_process: whether this process writes files.
    :param trained: the module holding the trained parameters (the denoiser with its network); plugins
        that track weights (EMA, checksums, uploads) read it.
    """

    options: Any
    arch_options: Any
    architecture: Any
    output_dir: Path
    is_main_process: bool = True
    trained: Any = None
    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    total_steps: int = 0
    last_metrics: dict[str, float] = attrs.field(factory=dict)
