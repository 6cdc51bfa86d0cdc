"""``tuner train``: the training loop on accelerate, readable top to bottom.

One optimizer step = ``gradient_accumulation_steps`` batches. Noise and timesteps of every batch come from
a generator seeded with (seed, process, batch number), and the batch order of every epoch from (seed,
epoch), so a run resumed from a state directory continues exactly where the saved one was.

:func:`train` is :func:`_setup` (everything the loop needs, a resumed position loaded), :func:`_run_epochs`
(batches, optimizer steps, the saves and samples due after them) and :func:`_finish` (the final files). The
run's position lives in one place, the :class:`~tuner_core.training.run.TrainingRun` that plugins receive and
state directories save.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from torch.utils.data import DataLoader

from tuner_core.architecture import Architecture
from tuner_core.config.dataset import load_dataset_config
from tuner_core.config.train_options import TrainOptions
from tuner_core.plugins import Plugins
from tuner_core.seeds import derive_seed, random_seed, seeded_generator
from tuner_core.training.cached_data import (
    CachedItemsDataset,
    EpochBatches,
    batch_settings,
    data_loader_workers,
    find_cached_items,
    stack_batch,
)
from tuner_core.training.distributed import leave_frozen_weights_out_of_ddp
from tuner_core.training.lr_schedulers import check_lr_options, lr_scheduler_for
from tuner_core.training.max_norm import scale_weight_norms
from tuner_core.training.metadata import training_metadata
from tuner_core.training.model_setup import PreparedModel, prepare_model
from tuner_core.training.optimizers import BuiltOptimizer, build_optimizer
from tuner_core.training.progress import Progress
from tuner_core.training.resume import mismatch_error, saved_seed
from tuner_core.training.run import TrainingRun
from tuner_core.training.samples import TrainingSamples
from tuner_core.training.saving import Saver, register_state_hooks
from tuner_core.training.timesteps import NoiseLevels

log = logging.getLogger(__name__)


@attrs.frozen
class TrainResult:
    """What a finished run produced."""

    weights: Path | None
    state: Path | None
    loss_plot: Path | None
    samples: list[Path]
    global_step: int
    epochs: int
    #: The mean loss of every optimizer step, from step 1 (kept across a resume).
    losses: tuple[float, ...] = ()


@attrs.frozen
class TrainingData:
    """The cached items and the loader that serves this process its share of them."""

    config: Any
    items: list[Any]
    sampler: EpochBatches
    loader: DataLoader
    batches_per_epoch: int


@attrs.define(kw_only=True)
class TrainingSession:
    """What :func:`_setup` builds for one run; the loop's functions read it and advance ``run``."""

    options: Any
    architecture: Architecture
    plugins: Plugins
    accelerator: Accelerator
    seed: int
    data: TrainingData
    epochs: int
    step_module: torch.nn.Module
    optimizer: Any
    scheduler: Any
    timesteps: NoiseLevels
    run: TrainingRun
    saver: Saver
    sampling: TrainingSamples
    on_step: Callable[[TrainingRun], None] | None = None
    #: Figures of the last optimizer step beyond loss and lr (``--scale_weight_norms``'s max-norm figures).
    step_figures: dict[str, float] = attrs.field(factory=dict)


def train(
    options: Any,
    *,
    architecture: Architecture,
    plugins: Plugins,
    on_step: Callable[[TrainingRun], None] | None = None,
) -> TrainResult:
    """Train with validated ``options`` (an instance of the architecture's ``train`` options class).

    :param on_step: called after every optimizer step with the run's state (for embedding programs).
    """
    session = _setup(options, architecture, plugins, on_step)
    run = session.run
    plugins.hook.tuner_on_train_start(run=run)
    enabled = session.accelerator.is_local_main_process
    with contextlib.closing(Progress(run.total_steps, enabled=enabled, start=run.global_step)) as progress:
        if session.options.sample_at_first and run.global_step == 0:
            session.sampling.maybe_sample(run, step=0, epoch=0, force=True)
        session.step_module.train()
        _run_epochs(session, progress)
    return _finish(session)


# -- setup -------------------------------------------------------------------------------------------------


def _setup(
    options: Any,
    architecture: Architecture,
    plugins: Plugins,
    on_step: Callable[[TrainingRun], None] | None,
) -> TrainingSession:
    """Accelerator, data, model, optimizer, schedule, saver and sampler; a resumed run's position loaded."""
    seed = (
        options.seed if options.seed is not None else saved_seed(options.resume)
    )  # a resumed run keeps its seed
    seed = seed if seed is not None else random_seed()
    accelerator = _accelerator(options)
    log.info("seed: %d, processes: %d, device: %s", seed, accelerator.num_processes, accelerator.device)
    # Before the model is built: the network's initial weights and dropout draw from these.
    torch.manual_seed(derive_seed(seed, "process", accelerator.process_index))
    random.seed(seed)

    data = _data(options, architecture, plugins, accelerator, seed)
    total_steps, epochs = _run_length(options, data)
    check_lr_options(options, total_steps)  # with the real step count, still before the model loads

    prepared = prepare_model(options, architecture, plugins, accelerator.device)
    built, scheduler = _optimizer_and_schedule(options, prepared, total_steps)
    # A block-swapped model is placed by its strategy; accelerate moving it whole would undo that.
    placement = [options.blocks_to_swap == 0, True]
    leave_frozen_weights_out_of_ddp(prepared.step, accelerator)
    step_module, optimizer = accelerator.prepare(prepared.step, built.optimizer, device_placement=placement)
    run = TrainingRun(
        options=options,
        architecture=architecture,
        output_dir=options.output_dir,
        is_main_process=accelerator.is_main_process,
        trained=prepared.step,
        total_steps=total_steps,
    )
    # In this order they are custom_checkpoint_0 and _1 of every state directory.
    accelerator.register_for_checkpointing(scheduler)
    accelerator.register_for_checkpointing(run)
    register_state_hooks(accelerator, prepared)
    if options.resume is not None:
        _resume(accelerator, options.resume, run)

    metadata = _metadata(options, architecture, prepared, built, data, total_steps, epochs)
    session = TrainingSession(
        options=options,
        architecture=architecture,
        plugins=plugins,
        accelerator=accelerator,
        seed=seed,
        data=data,
        epochs=epochs,
        step_module=step_module,
        optimizer=optimizer,
        scheduler=scheduler,
        timesteps=NoiseLevels.from_options(options),
        run=run,
        saver=Saver(accelerator, step_module, prepared, options, metadata, plugins, run, seed),
        sampling=TrainingSamples.create(options, architecture, plugins, accelerator, prepared),
        on_step=on_step,
    )
    if options.logging_dir:
        accelerator.init_trackers((options.log_prefix or "") + time.strftime("%Y%m%d%H%M%S"))
    return session


def _accelerator(options: Any) -> Accelerator:
    return Accelerator(
        # Several processes without CUDA: accelerate only sets up gloo (MULTI_CPU) when told it runs on CPU.
        cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        mixed_precision=options.mixed_precision,
        log_with="tensorboard" if options.logging_dir else None,
        project_config=ProjectConfiguration(
            project_dir=str(options.output_dir), logging_dir=str(options.logging_dir or "")
        ),
    )


def _data(
    options: Any, architecture: Architecture, plugins: Plugins, accelerator: Accelerator, seed: int
) -> TrainingData:
    config = load_dataset_config(options.dataset_config, architecture.dataset_options)
    items = find_cached_items(config, architecture, options)
    batch_sizes, repeats = batch_settings(config)
    sampler = EpochBatches(
        items,
        batch_sizes,
        repeats,
        seed=seed,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
    )
    workers = data_loader_workers(options.max_data_loader_n_workers)
    loader = DataLoader(
        CachedItemsDataset(items, architecture, plugins),
        batch_sampler=sampler,
        collate_fn=stack_batch,
        num_workers=workers,
        persistent_workers=options.persistent_data_loader_workers and workers > 0,
        # Its own generator: making an iterator must not draw from the global RNG that dropout uses,
        # or a resumed run would draw one number more than the run it continues.
        generator=torch.Generator().manual_seed(seed),
    )
    return TrainingData(config, items, sampler, loader, sampler.batches_per_epoch())


def _run_length(options: Any, data: TrainingData) -> tuple[int, int]:
    """The run's optimizer steps and epochs."""
    steps_per_epoch = math.ceil(data.batches_per_epoch / options.gradient_accumulation_steps)
    total_steps = (
        options.max_train_epochs * steps_per_epoch if options.max_train_epochs else options.max_train_steps
    )
    if options.max_train_epochs:
        log.info(
            "--max_train_epochs %d sets the length, %d steps (--max_train_steps is not used)",
            options.max_train_epochs,
            total_steps,
        )
    epochs = math.ceil(total_steps / steps_per_epoch)
    log.info(
        "%d items, %d batches per epoch and process, %d steps over %d epochs",
        len(data.items),
        data.batches_per_epoch,
        total_steps,
        epochs,
    )
    return total_steps, epochs


def _optimizer_and_schedule(
    options: TrainOptions, prepared: PreparedModel, total_steps: int
) -> tuple[BuiltOptimizer, Any]:
    built = build_optimizer(
        prepared.param_groups,
        optimizer_type=options.optimizer_type,
        learning_rate=options.learning_rate,
        optimizer_args=options.optimizer_args,
    )
    scheduler = lr_scheduler_for(built.optimizer, options, total_steps)
    return built, scheduler


def _resume(accelerator: Accelerator, state: Path, run: TrainingRun) -> None:
    """Load a state directory; pre-flight has compared its recorded settings with this run's."""
    try:
        accelerator.load_state(str(state))
    except (RuntimeError, ValueError, KeyError) as exc:  # a state saved without its settings record
        raise mismatch_error(state, exc) from exc
    log.info(
        "resumed from %s at step %d (epoch %d, batch %d)",
        state,
        run.global_step,
        run.epoch + 1,
        run.batches_in_epoch,
    )


def _metadata(
    options: Any,
    architecture: Architecture,
    prepared: PreparedModel,
    built: BuiltOptimizer,
    data: TrainingData,
    total_steps: int,
    epochs: int,
) -> dict[str, str]:
    """What every saved weights file records about the run."""
    network = prepared.network_type
    return training_metadata(
        options,
        architecture,
        session_id=uuid.uuid4().hex,
        started_at=time.time(),
        num_train_items=len(data.items),
        num_batches_per_epoch=data.batches_per_epoch,
        num_epochs=epochs,
        max_train_steps=total_steps,
        optimizer_description=built.description,
        network_metadata=(
            network.metadata(prepared.network_dim or 0, options.network_alpha, prepared.network_args)
            if network
            else {}
        ),
        network_args=prepared.network_args,
        datasets=[
            {
                "resolution": list(d.resolution),
                "batch_size": d.keys.batch_size,
                "num_repeats": d.keys.num_repeats,
            }
            for d in data.config.datasets
        ],
        model_name=str(architecture.component_path(architecture.trained_component, options) or ""),
        title=options.output_name,
    )


# -- the loop ----------------------------------------------------------------------------------------------


def _run_epochs(session: TrainingSession, progress: Progress) -> None:
    """Epochs until the last step; a resumed run first finishes the epoch it was saved in."""
    run = session.run
    while run.global_step < run.total_steps and run.epoch < session.epochs:
        _run_epoch(session, progress)
        if run.global_step >= run.total_steps:
            return
        run.epoch += 1
        run.epoch_ends.append(run.global_step)
        run.batches_in_epoch = 0
        _after_epoch(session)


def _run_epoch(session: TrainingSession, progress: Progress) -> None:
    """The epoch's remaining batches: an optimizer step every ``gradient_accumulation_steps`` of them."""
    run, data = session.run, session.data
    accumulation = session.options.gradient_accumulation_steps
    data.sampler.set_epoch(run.epoch, start=run.batches_in_epoch)
    losses: list[float] = []
    for batch in data.loader:
        run.batches_in_epoch += 1
        # The last batch of an epoch steps too, so no epoch's gradients spill into the next.
        sync = run.batches_in_epoch % accumulation == 0 or run.batches_in_epoch == data.batches_per_epoch
        losses.append(_backward(session, batch, sync=sync, accumulation=accumulation))
        if not sync:
            continue
        _optimizer_step(session)
        _record_step(session, sum(losses) / len(losses), progress)
        losses.clear()
        if run.global_step >= run.total_steps:
            return  # the final save is _finish's
        _after_step(session)


def _backward(
    session: TrainingSession, batch: dict[str, torch.Tensor], *, sync: bool, accumulation: int
) -> float:
    """Gradients of one batch; return its loss. They are all-reduced only on the batch that steps."""
    run, accelerator = session.run, session.accelerator
    batch = {k: v.to(accelerator.device) for k, v in batch.items()}
    # Noise and timesteps from (seed, process, batch number): a resumed run draws what the saved one would.
    number = run.epoch * session.data.batches_per_epoch + run.batches_in_epoch
    generator = seeded_generator(session.seed, "batch", accelerator.process_index, number)
    step_module = session.step_module
    with contextlib.nullcontext() if sync else accelerator.no_sync(step_module):
        loss = _loss(
            step_module,
            batch,
            session.timesteps,
            generator,
            session.architecture,
            session.plugins,
            session.options,
            accelerator,
        )
        accelerator.backward(loss / accumulation)
    return loss.detach().float().item()


def _optimizer_step(session: TrainingSession) -> None:
    """Clip, step the optimizer and the schedule, and count the step."""
    max_grad_norm = session.options.max_grad_norm
    if max_grad_norm > 0:
        session.accelerator.clip_grad_norm_(session.step_module.parameters(), max_grad_norm)
    session.optimizer.step()
    if session.options.scale_weight_norms:
        max_norm = session.options.scale_weight_norms
        session.step_figures = scale_weight_norms(session.step_module, max_norm, session.accelerator)
    session.scheduler.step()
    session.optimizer.zero_grad(set_to_none=True)
    session.run.global_step += 1


def _record_step(session: TrainingSession, loss: float, progress: Progress) -> None:
    """Show the step's metrics on the progress bar and tracker, and hand them to plugins and the caller."""
    run = session.run
    metrics = {"loss": loss, "lr": session.scheduler.get_last_lr()[0], "epoch": run.epoch + 1}
    metrics.update(session.step_figures)
    run.losses.append(loss)
    run.learning_rates.append(metrics["lr"])
    run.last_metrics = metrics
    progress.update(metrics)
    if session.options.logging_dir:
        logs = {"loss/current": loss, "lr/unet": metrics["lr"], **session.step_figures}
        session.accelerator.log(logs, step=run.global_step)
    session.plugins.hook.tuner_on_step_end(run=run, step=run.global_step, metrics=metrics)
    if session.on_step is not None:
        session.on_step(run)


def _after_step(session: TrainingSession) -> None:
    """The saves and samples due after an optimizer step (not the last)."""
    run, every = session.run, session.options.save_every_n_steps
    if every and run.global_step % every == 0:
        session.saver.save(step=run.global_step, epoch=run.epoch + 1)
    session.sampling.maybe_sample(run, step=run.global_step, epoch=None)


def _after_epoch(session: TrainingSession) -> None:
    """The saves and samples due after an epoch (not the last: its weights are the final ones)."""
    run, every = session.run, session.options.save_every_n_epochs
    if every and run.epoch % every == 0 and run.epoch < session.epochs:
        session.saver.save(epoch=run.epoch)
    session.sampling.maybe_sample(run, step=run.global_step, epoch=run.epoch)


# -- the end -----------------------------------------------------------------------------------------------


def _finish(session: TrainingSession) -> TrainResult:
    """The final weights (and state), the last samples and the loss plot."""
    run, options = session.run, session.options
    final = session.saver.save_final(epoch=min(run.epoch + 1, session.epochs))
    session.sampling.maybe_sample(run, step=run.global_step, epoch=None, final=True)
    plot = None
    if session.accelerator.is_main_process:
        from tuner_core.training.loss_plot import write_loss_plot

        plot = write_loss_plot(
            options.output_dir / f"{options.output_name}_loss.png",
            run.losses,
            learning_rates=run.learning_rates,
            epoch_ends=run.epoch_ends,
        )
    # Not accelerator.end_training(): it destroys the process group while the DDP-wrapped model still
    # lives, and gloo's teardown then hangs in the reducer's destructor once the model is freed.
    for tracker in session.accelerator.trackers:
        tracker.finish()
    return TrainResult(
        final.weights,
        final.state,
        plot,
        list(session.sampling.written),
        run.global_step,
        session.epochs,
        tuple(run.losses),
    )


def _loss(
    step_module: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    timesteps: NoiseLevels,
    generator: torch.Generator,
    architecture: Architecture,
    plugins: Plugins,
    options: Any,
    accelerator: Accelerator,
) -> torch.Tensor:
    latents = batch["latents"].float()
    noisy = plugins.hook.tuner_noisy_input(
        architecture=architecture, batch=batch, noisy=timesteps.noisy_input(latents, generator=generator)
    )
    with accelerator.autocast():
        prediction = step_module(batch, noisy.noisy_latents, noisy.timesteps)
    target = plugins.hook.tuner_training_target(
        architecture=architecture, batch=batch, latents=latents, noise=noisy.noise
    )
    return plugins.hook.tuner_compute_loss(
        architecture=architecture,
        prediction=prediction,
        target=target,
        sigmas=noisy.sigmas,
        batch=batch,
        options=options,
    )
