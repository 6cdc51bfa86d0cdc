"""The run's position: one record, saved in state directories under the keys older tuners wrote."""

from __future__ import annotations

from pathlib import Path

from tuner_core.training.run import TrainingRun


def _run() -> TrainingRun:
    return TrainingRun(options=None, architecture=None, output_dir=Path("."))


def test_state_dict_has_the_keys_of_the_former_counters():
    run = _run()
    run.global_step, run.epoch, run.batches_in_epoch, run.losses = 3, 1, 2, [0.5, 0.25, 0.125]
    run.last_metrics = {"loss": 0.125}
    state = run.state_dict()
    former = {"global_step": 3, "epoch": 1, "batches_in_epoch": 2, "losses": [0.5, 0.25, 0.125]}
    assert state == {**former, "learning_rates": [], "epoch_ends": []}
    state["losses"].append(1.0)  # a copy: saving must not alias the live list
    assert run.losses == [0.5, 0.25, 0.125]


def test_learning_rates_and_epoch_ends_are_saved_for_the_loss_plot_of_a_resumed_run():
    run = _run()
    run.learning_rates, run.epoch_ends = [1e-4, 2e-4], [2]
    again = _run()
    again.load_state_dict(run.state_dict())
    assert (again.learning_rates, again.epoch_ends) == ([1e-4, 2e-4], [2])


def test_a_state_saved_by_the_former_counters_loads():
    run = _run()
    run.load_state_dict({"global_step": 3, "epoch": 1, "batches_in_epoch": 2, "losses": [2.4, 2.5, 2.4]})
    assert (run.global_step, run.epoch, run.batches_in_epoch, run.losses) == (3, 1, 2, [2.4, 2.5, 2.4])
    assert run.step_in_epoch == 2  # the name plugins read before
