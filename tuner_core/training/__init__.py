"""The training engine: noise levels, loss, optimizers, schedules, saved files and the loop."""
