"""Writing a run's files: weights at the configured points (with retention) and resumable state directories.

Weights are gathered from every process under FSDP / DeepSpeed and written by the main process only; state
directories go through accelerate's ``save_state`` into a temporary directory that is renamed when complete.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import attrs
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from tuner_core.config.train_options import TrainOptions
from tuner_core.errors import ConfigError
from tuner_core.plugins import Plugins
from tuner_core.training import saved_files
from tuner_core.training.metadata import progress_metadata, with_hashes
from tuner_core.training.model_setup import PreparedModel
from tuner_core.training.resume import (
    SEED_KEY,
    TRAINABLE_FILE,
    mismatch_error,
    run_settings,
    write_run_settings,
)
from tuner_core.training.run import TrainingRun

log = logging.getLogger(__name__)


def register_state_hooks(accelerator: Accelerator, prepared: PreparedModel) -> None:
    """State directories hold only the trainable weights, never the frozen base model."""
    from safetensors.torch import load_file

    from tuner_core.cache.store import atomic_write_safetensors

    def save_hook(models: list[torch.nn.Module], weights: list[Any], output_dir: str) -> None:
        if accelerator.is_main_process:
            atomic_write_safetensors(
                Path(output_dir) / TRAINABLE_FILE, prepared.step.trainable_state_dict(), {}
            )
        weights.clear()

    def load_hook(models: list[torch.nn.Module], input_dir: str) -> None:
        path = Path(input_dir) / TRAINABLE_FILE
        if not path.is_file():
            raise ConfigError(
                f"--resume {input_dir} holds no {TRAINABLE_FILE}; is it a tuner state directory?"
            )
        try:
            prepared.step.load_trainable_state_dict(load_file(str(path)))
        except RuntimeError as exc:  # size mismatch, missing or unexpected keys
            raise mismatch_error(Path(input_dir), exc) from exc
        models.clear()

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return  # they save and load their sharded model states themselves
    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


@attrs.frozen
class Saved:
    """The final files of a run."""

    weights: Path | None
    state: Path | None


class Saver:
    """Writes weights and states at the configured points and prunes old ones."""

    def __init__(
        self,
        accelerator: Accelerator,
        step_module: torch.nn.Module,
        prepared: PreparedModel,
        options: TrainOptions,
        metadata: dict[str, str],
        plugins: Plugins,
        run: TrainingRun,
        seed: int,
    ) -> None:
        self.accelerator = accelerator
        self.seed = seed
        self.step_module = step_module
        self.prepared = prepared
        self.options = options
        self.metadata = metadata
        self.plugins = plugins
        self.run = run

    def _trainable_tensors(self) -> dict[str, torch.Tensor]:
        """The trainable weights; under FSDP / DeepSpeed gathered from every process (all must call this)."""
        if self.accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            return self.prepared.step.trainable_state_dict()
        full = self.accelerator.get_state_dict(self.step_module)
        # The network's module names are its saved names (lora_unet_...); the denoiser's are its own.
        prefix = "network." if self.prepared.network_type is not None else "model."
        return {k[len(prefix) :]: v for k, v in (full or {}).items() if k.startswith(prefix)}

    def _weights(self, name: str, *, epoch: int, steps: int, finished: bool) -> Path | None:
        tensors = self._trainable_tensors()
        if not self.accelerator.is_main_process:
            return None
        path = self.options.output_dir / name
        progress = progress_metadata(epoch=epoch, steps=steps, finished=finished)
        meta = {**self.metadata, **({} if self.options.no_metadata else progress)}  # the reference's minimum
        if self.prepared.network_type is not None:  # as the reference: every network file, as saved
            meta = with_hashes(meta, tensors, self.options.save_precision)
        saved_files.save_weights(path, tensors, meta, self.options.save_precision)
        self.plugins.hook.tuner_on_save(run=self.run, path=path, kind="weights")
        log.info("saved %s", path)
        return path

    def _state(self, name: str) -> Path:
        final = self.options.output_dir / name
        temp = final.with_name(f".{final.name}.tmp")
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(temp))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            network = self.prepared.network_type
            settings = run_settings(
                self.run.architecture.name,
                self.options,
                network_type=network.name if network else None,
                network_dim=self.prepared.network_dim,
            )
            write_run_settings(temp, {**settings, SEED_KEY: self.seed})
            saved_files.commit_directory(temp, final)
            self.plugins.hook.tuner_on_save(run=self.run, path=final, kind="state")
            log.info("saved state %s", final)
        self.accelerator.wait_for_everyone()
        return final

    def save(self, *, epoch: int, step: int | None = None) -> None:
        """An intermediate save at the run's position: per step (``step`` given) or per epoch."""
        by_step = step is not None
        names = {"step": step} if by_step else {"epoch": epoch}
        self._weights(
            saved_files.weights_name(self.options.output_name, **names),
            epoch=epoch,
            steps=self.run.global_step,
            finished=False,
        )
        if self.options.save_state:
            self._state(saved_files.state_name(self.options.output_name, **names))
        if self.accelerator.is_main_process:
            kind = "step" if by_step else "epoch"
            keep = self.options.save_last_n_steps if by_step else self.options.save_last_n_epochs
            keep_state = (
                self.options.save_last_n_steps_state if by_step else self.options.save_last_n_epochs_state
            )
            if by_step and keep and self.options.save_every_n_steps:
                keep = max(keep // self.options.save_every_n_steps, 1)
            if by_step and keep_state and self.options.save_every_n_steps:
                keep_state = max(keep_state // self.options.save_every_n_steps, 1)
            saved_files.prune(
                self.options.output_dir, self.options.output_name, kind=kind, keep=keep, state=False
            )
            saved_files.prune(
                self.options.output_dir,
                self.options.output_name,
                kind=kind,
                keep=keep_state or keep,
                state=True,
            )

    def save_final(self, *, epoch: int) -> Saved:
        """The final weights (and state, with ``--save_state`` or ``--save_state_on_train_end``)."""
        weights = self._weights(
            saved_files.weights_name(self.options.output_name),
            epoch=epoch,
            steps=self.run.global_step,
            finished=True,
        )
        state = None
        if self.options.save_state or self.options.save_state_on_train_end:
            state = self._state(saved_files.state_name(self.options.output_name))
        return Saved(weights, state)
