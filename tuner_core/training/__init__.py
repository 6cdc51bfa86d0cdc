"""The training engine: timesteps, loss, optimizers, schedulers, checkpoints and the loop."""
