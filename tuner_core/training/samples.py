"""Sample videos during training (``--sample_prompts``, ``--sample_every_n_steps/epochs``, ``--sample_at_first``).

Samples are generated on the main process through the ``tuner_sample`` hook with the model being trained.
The other components (VAE, text encoders) are loaded for each round and freed afterwards, and the global
random state is restored, so sampling never changes what training does next.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from tuner_core.architecture import Architecture
from tuner_core.components import Components
from tuner_core.memory.block_swap import switch_to_inference, switch_to_training
from tuner_core.plugins import Plugins
from tuner_core.sampling.outputs import generation_metadata, write_generated
from tuner_core.sampling.prompts import read_prompt_file
from tuner_core.sampling.request import SampleRequest
from tuner_core.seeds import MAX_SEED
from tuner_core.training.model_setup import PreparedModel
from tuner_core.training.run import TrainingRun

log = logging.getLogger(__name__)


class TrainingSamples:
    """Decides when to sample, generates, and writes the files under ``output_dir/sample``."""

    def __init__(
        self,
        options: Any,
        architecture: Architecture,
        plugins: Plugins,
        accelerator: Accelerator,
        prepared: PreparedModel,
        requests: list[SampleRequest],
    ) -> None:
        self.options = options
        self.architecture = architecture
        self.plugins = plugins
        self.accelerator = accelerator
        self.prepared = prepared
        self.requests = requests
        self.written: list[Path] = []

    @classmethod
    def create(
        cls,
        options: Any,
        architecture: Architecture,
        plugins: Plugins,
        accelerator: Accelerator,
        prepared: PreparedModel,
    ) -> TrainingSamples:
        """Read the prompt file (pre-flight has checked that the architecture can sample with it)."""
        requests = read_prompt_file(options.sample_prompts) if options.sample_prompts else []
        asked = options.sample_every_n_steps or options.sample_every_n_epochs or options.sample_at_first
        if asked and not requests:
            log.warning("sampling was asked for but --sample_prompts is not given; no samples will be made")
        return cls(options, architecture, plugins, accelerator, prepared, requests)

    def _due(self, *, step: int, epoch: int | None, force: bool, final: bool) -> bool:
        if not self.requests:
            return False
        if force:
            return True
        if final:
            return bool(self.options.sample_every_n_steps or self.options.sample_every_n_epochs)
        if epoch is not None:
            return (
                bool(self.options.sample_every_n_epochs) and epoch % self.options.sample_every_n_epochs == 0
            )
        return bool(self.options.sample_every_n_steps) and step % self.options.sample_every_n_steps == 0

    def maybe_sample(
        self, run: TrainingRun, *, step: int, epoch: int | None, force: bool = False, final: bool = False
    ) -> list[Path]:
        """Generate the samples if this point is one of the configured ones; return the written files."""
        if not self._due(step=step, epoch=epoch, force=force, final=final):
            return []
        paths: list[Path] = []
        if self.accelerator.is_main_process:
            paths = self._generate(run, step=step, epoch=epoch)
            self.written += paths
            self.plugins.hook.tuner_on_sample(run=run, paths=paths, step=step)
        self.accelerator.wait_for_everyone()
        return paths

    def _generate(self, run: TrainingRun, *, step: int, epoch: int | None) -> list[Path]:
        device = self.accelerator.device
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        model = self.prepared.step.model
        was_training = model.training
        model.eval()
        switch_to_inference(model)  # block swap: the forward-only schedule while sampling
        # The encoders load when the sampler first reads them and are freed after this round.
        models = Components(
            self.architecture,
            self.plugins,
            self.options,
            device,
            self.architecture.sample_components(self.options),
            preloaded={self.architecture.trained_component: model},
        )
        try:
            stamp = time.strftime("%Y%m%d%H%M%S")
            label = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
            seeds = [
                request.seed
                if request.seed is not None
                else ((self.options.seed or 0) + index) % (MAX_SEED + 1)
                for index, request in enumerate(self.requests)
            ]
            paths: list[Path] = []
            with torch.no_grad(), self.accelerator.autocast():
                results = self.plugins.hook.tuner_sample(
                    architecture=self.architecture,
                    models=models,
                    requests=self.requests,
                    options=self.options,
                    generators=[torch.Generator().manual_seed(seed) for seed in seeds],
                )
                for index, (request, seed, latents) in enumerate(zip(self.requests, seeds, results)):
                    written = write_generated(
                        latents,
                        architecture=self.architecture,
                        plugins=self.plugins,
                        models=models,
                        options=self.options,
                        directory=self.options.output_dir / "sample",
                        stem=f"{self.options.output_name}_{label}_{index:02d}_{stamp}_{seed}",
                        output_type="video",
                        fps=self.architecture.media.fps,
                        metadata=generation_metadata(request, seed, self.architecture.media.fps),
                    )
                    paths += written["video"]
                    log.info("sample %s", paths[-1])
            return paths
        finally:
            models.release()
            switch_to_training(model)
            model.train(was_training)
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
