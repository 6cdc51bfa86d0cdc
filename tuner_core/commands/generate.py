"""``tuner generate``: the jobs (one prompt, a ``--from_file``, typed prompts), their latents, their files.

The components load when the architecture first reads them; it frees each when its phase is over (the
text encoders before the denoiser runs), and the denoiser gets its LoRA files and memory strategies as it
loads. All jobs of a ``--from_file`` run go to the architecture at once, so each model loads once.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from tuner_core.architecture import Architecture
from tuner_core.commands.cache_run import resolve_device
from tuner_core.commands.network_merge import merge_networks, save_merged_model
from tuner_core.commands.result import CommandResult
from tuner_core.components import Components
from tuner_core.config.generate_options import GenerateOptions
from tuner_core.memory.apply import apply_memory_strategies, load_transform
from tuner_core.plugins import Plugins
from tuner_core.sampling.jobs import interactive_requests, read_prompt_jobs
from tuner_core.sampling.outputs import generation_metadata, read_latent_file, write_generated
from tuner_core.sampling.request import SampleRequest
from tuner_core.seeds import random_seed
from tuner_core.training.model_setup import memory_settings

log = logging.getLogger(__name__)


def run_generate(
    options: GenerateOptions,
    *,
    architecture: Architecture,
    plugins: Plugins,
    jobs: Iterable[SampleRequest] | None = None,
) -> CommandResult:
    """Generate the videos ``options`` ask for (or save the LoRA-merged model) and report the files.

    :param jobs: the requests to generate, one at a time with the models kept loaded between them (what
        ``--interactive`` does with typed prompts). By default: ``--from_file``'s lines, the typed lines of
        ``--interactive`` (read from standard input, messages to the log), or the single request of the
        command line.
    """
    device = resolve_device(options.device)
    if options.save_merged_model is not None:  # merging needs the denoiser and the network files only
        return save_merged_model(options, architecture, plugins, device)
    models = _components(options, architecture, plugins, device, hold=jobs is not None or options.interactive)
    try:
        if options.latent_path:
            return _decode_latent_files(options, architecture, plugins, models)
        base = architecture.generation_request(options)
        if jobs is None and options.interactive:
            jobs = interactive_requests(base, sys.stdin, prompt_out=log.warning)
        if jobs is not None:  # one job at a time, as it is typed
            batches: Iterable[Sequence[SampleRequest]] = ([job] for job in jobs)
        elif options.from_file is not None:
            batches = [read_prompt_jobs(options.from_file, base)]
        else:
            batches = [[base]]
        outputs: dict[str, list[Path]] = {}
        seeds: list[int] = []
        for batch in batches:
            for kind, paths in _generate_batch(batch, options, architecture, plugins, models, seeds).items():
                outputs.setdefault(kind, []).extend(paths)
    finally:
        models.release()
    counts = {"seed": seeds[0]} if len(seeds) == 1 else {"videos": len(seeds)}
    return CommandResult("generate", outputs, counts)


def _components(
    options: GenerateOptions,
    architecture: Architecture,
    plugins: Plugins,
    device: torch.device,
    *,
    hold: bool,
) -> Components:
    """The command's components; the denoiser gets the LoRA files and the memory strategies as it loads."""
    settings = memory_settings(options, training=False)
    denoiser = architecture.trained_component

    def prepare(model: torch.nn.Module) -> torch.nn.Module:
        merge_networks(model, options, architecture, plugins)
        apply_memory_strategies(model, architecture.layout, settings, plugins, device)
        return model

    return Components(
        architecture,
        plugins,
        options,
        device,
        architecture.components("generate", options),
        transforms={denoiser: load_transform(architecture.layout, settings, plugins)},
        prepare={denoiser: prepare},
        hold=hold,
    )


def _generate_batch(
    batch: Sequence[SampleRequest],
    options: GenerateOptions,
    architecture: Architecture,
    plugins: Plugins,
    models: Components,
    seeds: list[int],
) -> dict[str, list[Path]]:
    """Sample the jobs of ``batch`` together and write each as soon as its latents arrive."""
    batch_seeds = [job.seed if job.seed is not None else random_seed() for job in batch]
    generators = [torch.Generator().manual_seed(seed) for seed in batch_seeds]
    outputs: dict[str, list[Path]] = {}
    with torch.no_grad():
        results = plugins.hook.tuner_sample(
            architecture=architecture, models=models, requests=batch, options=options, generators=generators
        )
        for index, (job, seed, latents) in enumerate(zip(batch, batch_seeds, results)):
            log.info("video %d of %d: seed %d", index + 1, len(batch), seed)
            seeds.append(seed)
            stem = _free_stem(options.save_path, f"{time.strftime('%Y%m%d-%H%M%S')}_{seed}")
            metadata = None if options.no_metadata else generation_metadata(job, seed, options.fps)
            written = write_generated(
                latents,
                architecture=architecture,
                plugins=plugins,
                models=models,
                options=options,
                directory=options.save_path,
                stem=stem,
                output_type=options.output_type,
                fps=options.fps,
                metadata=metadata,
            )
            for kind, paths in written.items():
                outputs.setdefault(kind, []).extend(paths)
    return outputs


def _decode_latent_files(
    options: GenerateOptions, architecture: Architecture, plugins: Plugins, models: Any
) -> CommandResult:
    """``--latent_path``: decode saved latents into videos (or images) without the denoiser or encoders."""
    outputs: dict[str, list[Path]] = {}
    output_type = options.output_type if options.output_type in ("video", "images") else "video"
    for path in options.latent_path:
        saved = read_latent_file(path)
        stem = _free_stem(options.save_path, path.name.removesuffix(".safetensors").removesuffix("_latent"))
        metadata = None if options.no_metadata else saved.metadata
        fps = float(saved.metadata.get("fps", options.fps))
        with torch.no_grad():
            written = write_generated(
                saved.latents,
                architecture=architecture,
                plugins=plugins,
                models=models,
                options=options,
                directory=options.save_path,
                stem=stem,
                output_type=output_type,
                fps=fps,
                metadata=metadata,
            )
        for kind, paths in written.items():
            outputs.setdefault(kind, []).extend(paths)
    return CommandResult("generate", outputs, {"decoded": len(options.latent_path)})


def _free_stem(directory: Path, stem: str) -> str:
    """``stem``, or ``stem_2``, ``stem_3``, ... when a job of the same second and seed already wrote it."""
    candidate, number = stem, 1
    while (
        (directory / candidate).exists()
        or any(directory.glob(f"{candidate}.*"))
        or any(directory.glob(f"{candidate}_latent.*"))
    ):
        number += 1
        candidate = f"{stem}_{number}"
    return candidate
