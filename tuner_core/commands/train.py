"""``tuner train`` as a library call."""

from __future__ import annotations

from tuner_core.architecture import Architecture
from tuner_core.commands.result import CommandResult
from tuner_core.config.train_options import TrainOptions
from tuner_core.plugins import Plugins


def run_train(options: TrainOptions, *, architecture: Architecture, plugins: Plugins) -> CommandResult:
    """Train and report the written weights, state, loss plot and samples, and the first and last loss."""
    from tuner_core.training.trainer import train

    result = train(options, architecture=architecture, plugins=plugins)
    outputs = {
        "weights": [p for p in (result.weights,) if p is not None],
        "state": [p for p in (result.state,) if p is not None],
        "loss plot": [p for p in (result.loss_plot,) if p is not None],
        "samples": list(result.samples),
    }
    counts: dict[str, int | float] = {"steps": result.global_step, "epochs": result.epochs}
    if result.losses:
        counts |= {"first loss": result.losses[0], "last loss": result.losses[-1]}
    return CommandResult("train", {k: v for k, v in outputs.items() if v}, counts)
