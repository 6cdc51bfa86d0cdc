"""The state of a training run that lifecycle hooks and callbacks see, and that every state directory saves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

# What a state directory records of the position: the keys of the ``Counters`` that older tuners saved, so
# that their states still resume.
_POSITION = ("global_step", "epoch", "batches_in_epoch", "losses", "learning_rates", "epoch_ends")
_LISTS = ("losses", "learning_rates", "epoch_ends")


@attrs.define
class TrainingRun:
    """A training run in progress: the one record of its position.

    The trainer advances it, accelerate saves and restores it with every state directory
    (:meth:`state_dict` / :meth:`load_state_dict`), and lifecycle hooks receive it.

    :param options: the validated training options (the architecture's subclass of ``TrainOptions``).
    :param architecture: the architecture being trained.
    :param output_dir: where weights, states, samples and logs go.
    :param is_main_process: whether this process writes files.
    :param trained: the module holding the trained parameters (the denoiser with its network); plugins
        that track weights (EMA, checksums, uploads) read it.
    :param global_step: optimizer steps done.
    :param epoch: epochs completed (0 during the first one).
    :param batches_in_epoch: batches of the current epoch done, on this process.
    :param total_steps: optimizer steps the run makes in all.
    :param losses: the mean loss of every optimizer step done.
    :param learning_rates: the learning rate of every optimizer step done (first parameter group).
    :param epoch_ends: the global step at which each completed epoch ended.
    :param last_metrics: the metrics of the last optimizer step (``loss``, ``lr``, ``epoch``).
    """

    options: Any
    architecture: Any
    output_dir: Path
    is_main_process: bool = True
    trained: Any = None
    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    total_steps: int = 0
    losses: list[float] = attrs.field(factory=list)
    learning_rates: list[float] = attrs.field(factory=list)
    epoch_ends: list[int] = attrs.field(factory=list)
    last_metrics: dict[str, float] = attrs.field(factory=dict)

    @property
    def step_in_epoch(self) -> int:
        """The former name of :attr:`batches_in_epoch` (it counts batches, not optimizer steps)."""
        return self.batches_in_epoch

    def state_dict(self) -> dict[str, Any]:
        """The position, as saved in a state directory."""
        return {key: list(value) if key in _LISTS else value for key, value in self._position().items()}

    def _position(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in _POSITION}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a position that :meth:`state_dict` (or an older tuner's ``Counters``) saved."""
        for key in _POSITION:
            if key in state:
                setattr(self, key, list(state[key]) if key in _LISTS else state[key])
