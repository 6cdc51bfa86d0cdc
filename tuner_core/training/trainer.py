"""``tuner train``: the training loop on accelerate, readable top to bottom.

One optimizer step = ``gradient_accumulation_steps`` batches. Noise and timesteps of every batch come from
a generator seeded with (seed, process, batch number), and the batch order of every epoch from (seed,
epoch), so a run resumed from a state directory continues exactly where the saved one was.
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
from tuner_core.plugins import Plugins
from tuner_core.seeds import derive_seed, random_seed, seeded_generator
from tuner_core.training.cached_data import (
    CachedItemsDataset,
    EpochBatchSampler,
    batch_settings,
    data_loader_workers,
    find_cached_items,
    stack_batch,
)
from tuner_core.training.lr_schedulers import build_lr_scheduler, check_lr_options
from tuner_core.training.metadata import training_metadata
from tuner_core.training.model_setup import prepare_model
from tuner_core.training.optimizers import build_optimizer
from tuner_core.training.progress import Progress
from tuner_core.training.resume import mismatch_error
from tuner_core.training.run import TrainingRun
from tuner_core.training.sampling import TrainingSampler
from tuner_core.training.saving import Saver, register_state_hooks
from tuner_core.training.timesteps import TimestepSampler

log = logging.getLogger(__name__)


@attrs.define
class Counters:
    """Position of a run, saved in every state directory."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    losses: list[float] = attrs.field(factory=list)

    def state_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@attrs.frozen
class TrainResult:
    """What a finished run produced."""

    weights: Path | None
    state: Path | None
    loss_plot: Path | None
    samples: list[Path]
    global_step: int
    epochs: int


def train(
    options: Any,
    *,
    architecture: Architecture,
    plugins: Plugins,
    on_step: Callable[[TrainingRun], None] | None = None,
) -> TrainResult:
    """Train with validated ``options`` (a :class:`~tuner_core.options.CommandOptions`).

    :param on_step: called after every optimizer step with the run's state (for embedding programs).
    """
    core = options.core
    seed = core.seed if core.seed is not None else random_seed()
    accelerator = Accelerator(
        # Several processes without CUDA: accelerate only sets up gloo (MULTI_CPU) when told it runs on CPU.
        cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        mixed_precision=core.mixed_precision,
        log_with="tensorboard" if core.logging_dir else None,
        project_config=ProjectConfiguration(
            project_dir=str(core.output_dir), logging_dir=str(core.logging_dir or "")
        ),
    )
    log.info("seed: %d, processes: %d, device: %s", seed, accelerator.num_processes, accelerator.device)
    torch.manual_seed(derive_seed(seed, "process", accelerator.process_index))
    random.seed(seed)

    # -- data --------------------------------------------------------------------------------------------
    config = load_dataset_config(core.dataset_config, architecture.dataset_options)
    items = find_cached_items(config, architecture, options)
    batch_sizes, repeats = batch_settings(config)
    sampler = EpochBatchSampler(
        items,
        batch_sizes,
        repeats,
        seed=seed,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
    )
    workers = data_loader_workers(core.max_data_loader_n_workers)
    loader = DataLoader(
        CachedItemsDataset(items, architecture, plugins),
        batch_sampler=sampler,
        collate_fn=stack_batch,
        num_workers=workers,
        persistent_workers=core.persistent_data_loader_workers and workers > 0,
        # Its own generator: making an iterator must not draw from the global RNG that dropout uses,
        # or a resumed run would draw one number more than the run it continues.
        generator=torch.Generator().manual_seed(seed),
    )
    accumulation = core.gradient_accumulation_steps
    batches_per_epoch = sampler.batches_per_epoch()
    steps_per_epoch = math.ceil(batches_per_epoch / accumulation)
    total_steps = core.max_train_epochs * steps_per_epoch if core.max_train_epochs else core.max_train_steps
    if core.max_train_epochs:
        log.info(
            "--max_train_epochs %d sets the length, %d steps (--max_train_steps is not used)",
            core.max_train_epochs,
            total_steps,
        )
    epochs = math.ceil(total_steps / steps_per_epoch)
    check_lr_options(core, total_steps)  # with the real step count, still before the model loads
    log.info(
        "%d items, %d batches per epoch and process, %d steps over %d epochs",
        len(items),
        batches_per_epoch,
        total_steps,
        epochs,
    )

    # -- model, optimizer, schedule ----------------------------------------------------------------------
    prepared = prepare_model(options, architecture, plugins, accelerator.device)
    built = build_optimizer(
        prepared.param_groups,
        optimizer_type=core.optimizer_type,
        learning_rate=core.learning_rate,
        optimizer_args=core.optimizer_args,
    )
    scheduler = build_lr_scheduler(
        built.optimizer,
        lr_scheduler=core.lr_scheduler,
        num_training_steps=total_steps,
        lr_warmup_steps=core.lr_warmup_steps,
        lr_decay_steps=core.lr_decay_steps,
        lr_scheduler_num_cycles=core.lr_scheduler_num_cycles,
        lr_scheduler_power=core.lr_scheduler_power,
        lr_scheduler_min_lr_ratio=core.lr_scheduler_min_lr_ratio,
        learning_rate=core.learning_rate,
    )
    step_module, optimizer = accelerator.prepare(prepared.step, built.optimizer)
    counters = Counters()
    accelerator.register_for_checkpointing(scheduler)
    accelerator.register_for_checkpointing(counters)
    register_state_hooks(accelerator, prepared)
    if core.resume is not None:  # pre-flight has compared the state's recorded settings with these
        try:
            accelerator.load_state(str(core.resume))
        except (RuntimeError, ValueError, KeyError) as exc:  # a state saved without its settings record
            raise mismatch_error(core.resume, exc) from exc
        log.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            core.resume,
            counters.global_step,
            counters.epoch + 1,
            counters.batches_in_epoch,
        )

    timesteps = TimestepSampler.from_options(core)
    run = TrainingRun(
        options=core,
        arch_options=options.arch,
        architecture=architecture,
        output_dir=core.output_dir,
        is_main_process=accelerator.is_main_process,
        trained=prepared.step,
        global_step=counters.global_step,
        epoch=counters.epoch,
        total_steps=total_steps,
    )
    metadata = training_metadata(
        options,
        architecture,
        session_id=uuid.uuid4().hex,
        started_at=time.time(),
        num_train_items=len(items),
        num_batches_per_epoch=batches_per_epoch,
        num_epochs=epochs,
        max_train_steps=total_steps,
        optimizer_description=built.description,
        network_metadata=(
            prepared.network_type.metadata(
                prepared.network_dim or 0, core.network_alpha, prepared.network_args
            )
            if prepared.network_type
            else {}
        ),
        network_args=prepared.network_args,
        datasets=[
            {
                "resolution": list(d.resolution),
                "batch_size": d.keys.batch_size,
                "num_repeats": d.keys.num_repeats,
            }
            for d in config.datasets
        ],
        model_name=str(getattr(options, architecture.trained_component, "") or ""),
        title=core.output_name,
    )
    saver = Saver(accelerator, step_module, prepared, core, metadata, plugins, run)
    sampling = TrainingSampler.create(options, architecture, plugins, accelerator, prepared)
    if core.logging_dir:
        accelerator.init_trackers((core.log_prefix or "") + time.strftime("%Y%m%d%H%M%S"))
    plugins.hook.tuner_on_train_start(run=run)
    progress = Progress(total_steps, enabled=accelerator.is_local_main_process, start=counters.global_step)

    if core.sample_at_first and counters.global_step == 0:
        sampling.maybe_sample(run, step=0, epoch=0, force=True)

    step_module.train()
    pending: list[float] = []
    try:
        while counters.global_step < total_steps and counters.epoch < epochs:
            sampler.set_epoch(counters.epoch, start=counters.batches_in_epoch)
            for batch in loader:
                counters.batches_in_epoch += 1
                last_of_epoch = counters.batches_in_epoch == batches_per_epoch
                sync = counters.batches_in_epoch % accumulation == 0 or last_of_epoch
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                number = counters.epoch * batches_per_epoch + counters.batches_in_epoch
                generator = seeded_generator(seed, "batch", accelerator.process_index, number)
                with contextlib.nullcontext() if sync else accelerator.no_sync(step_module):
                    loss = _loss(
                        step_module, batch, timesteps, generator, architecture, plugins, options, accelerator
                    )
                    accelerator.backward(loss / accumulation)
                pending.append(loss.detach().float().item())
                if not sync:
                    continue
                if core.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(step_module.parameters(), core.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                counters.global_step += 1
                step_loss = sum(pending) / len(pending)
                pending.clear()
                counters.losses.append(step_loss)
                run.global_step, run.epoch, run.step_in_epoch = (
                    counters.global_step,
                    counters.epoch,
                    counters.batches_in_epoch,
                )
                metrics = {"loss": step_loss, "lr": scheduler.get_last_lr()[0], "epoch": counters.epoch + 1}
                run.last_metrics = metrics
                progress.update(metrics)
                if core.logging_dir:
                    accelerator.log(
                        {"loss/current": step_loss, "lr/unet": metrics["lr"]}, step=counters.global_step
                    )
                plugins.hook.tuner_on_step_end(run=run, step=counters.global_step, metrics=metrics)
                if on_step is not None:
                    on_step(run)
                if counters.global_step >= total_steps:
                    break
                if core.save_every_n_steps and counters.global_step % core.save_every_n_steps == 0:
                    saver.save(step=counters.global_step, epoch=counters.epoch + 1, counters=counters)
                sampling.maybe_sample(run, step=counters.global_step, epoch=None)
            if counters.global_step >= total_steps:
                break
            counters.epoch += 1
            counters.batches_in_epoch = 0
            if (
                core.save_every_n_epochs
                and counters.epoch % core.save_every_n_epochs == 0
                and counters.epoch < epochs
            ):
                saver.save(epoch=counters.epoch, counters=counters)
            sampling.maybe_sample(run, step=counters.global_step, epoch=counters.epoch)
    finally:
        progress.close()

    final = saver.save_final(counters=counters, epoch=min(counters.epoch + 1, epochs))
    sampling.maybe_sample(run, step=counters.global_step, epoch=None, final=True)
    plot = None
    if accelerator.is_main_process:
        from tuner_core.training.loss_plot import write_loss_plot

        plot = write_loss_plot(core.output_dir / f"{core.output_name}_loss.png", counters.losses)
    accelerator.end_training()
    return TrainResult(final.weights, final.state, plot, list(sampling.written), counters.global_step, epochs)


def _loss(
    step_module: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    timesteps: TimestepSampler,
    generator: torch.Generator,
    architecture: Architecture,
    plugins: Plugins,
    options: Any,
    accelerator: Accelerator,
) -> torch.Tensor:
    latents = batch["latents"].float()
    noisy = timesteps.noisy_input(latents, generator=generator)
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
        options=options.core,
    )
