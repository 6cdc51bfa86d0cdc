"""``tuner generate``: the jobs (one prompt, a ``--from_file``, typed prompts), their latents, their files.

The components load when the architecture first reads them; it frees each when its phase is over (the
text encoders before the denoiser runs), and the denoiser gets its LoRA files and memory strategies as it
loads. All jobs of a ``--from_file`` run go to the architecture at once, so each model loads once.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from tuner_core.architecture import Architecture
from tuner_core.commands import own_option_names
from tuner_core.commands.cache_run import resolve_device
from tuner_core.commands.result import CommandResult
from tuner_core.commands.save_merged import save_merged_model
from tuner_core.components import Components
from tuner_core.config.generate_options import GenerateOptions
from tuner_core.errors import ConfigError
from tuner_core.memory.apply import apply_memory_strategies, load_transform
from tuner_core.network_files import lora_weight_files, merge_network_types
from tuner_core.network_merge import NetworkMerge
from tuner_core.options import coerce, option_fields
from tuner_core.plugins import Plugins
from tuner_core.sampling.jobs import interactive_requests, read_prompt_jobs
from tuner_core.sampling.outputs import generation_metadata, read_latent_file, write_generated
from tuner_core.sampling.request import SampleRequest
from tuner_core.seeds import random_seed
from tuner_core.training.model_setup import memory_settings
from tuner_core.weights import chain_transforms

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
            batches: Iterable[Sequence[SampleRequest]] = (
                [job] for job in _checked(jobs, options, architecture)
            )
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


def _checked(
    jobs: Iterable[SampleRequest], options: GenerateOptions, architecture: Architecture
) -> Iterator[SampleRequest]:
    """The jobs that pass the architecture's checks; each other one is logged and skipped.

    Typed jobs miss the pre-flight, which sees only the command line; checked here, a typo (a missing
    image, a size the model cannot make) costs one line instead of the session and its loaded models.
    """
    for job in jobs:
        problems = architecture.check_request(job, options)
        if problems:
            log.error("prompt skipped: %s", "; ".join(problems))
            continue
        yield job


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
    merge = None
    if options.lora_weight:  # merged into each weight as it streams in, before fp8 quantises it
        merge = NetworkMerge(lora_weight_files(options), merge_network_types(options, plugins), architecture)

    def prepare(model: torch.nn.Module) -> torch.nn.Module:
        if merge is not None:
            merge.finish(model)
        apply_memory_strategies(model, architecture.layout, settings, plugins, device)
        return model

    return Components(
        architecture,
        plugins,
        options,
        device,
        architecture.components("generate", options),
        transforms={
            denoiser: chain_transforms(merge, load_transform(architecture.layout, settings, plugins))
        },
        prepare={denoiser: prepare},
        hold=hold,
        # Block swap places each weight itself: the denoiser loads on the CPU, never whole on the GPU.
        load_devices={denoiser: torch.device("cpu")} if settings.blocks_to_swap > 0 else None,
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
    # Pixels only: the latents are already saved. Images for the types that write images, else a video.
    output_type = "images" if options.output_type in ("images", "latent_images") else "video"
    for path in options.latent_path:
        saved = read_latent_file(path)
        stem = _free_stem(options.save_path, path.name.removesuffix(".safetensors").removesuffix("_latent"))
        metadata = None if options.no_metadata else saved.metadata
        file_options = _recorded_settings(options, saved.metadata, path)
        with torch.no_grad():
            written = write_generated(
                saved.latents,
                architecture=architecture,
                plugins=plugins,
                models=models,
                options=file_options,
                directory=options.save_path,
                stem=stem,
                output_type=output_type,
                fps=file_options.fps,
                metadata=metadata,
            )
        for kind, paths in written.items():
            outputs.setdefault(kind, []).extend(paths)
    return CommandResult("generate", outputs, {"decoded": len(options.latent_path)})


def _recorded_settings(options: GenerateOptions, metadata: Mapping[str, str], path: Path) -> GenerateOptions:
    """``options`` with the settings a latent file records wherever the command line left the default.

    A latent video decodes right only with some of the settings it was generated with (FramePack's
    ``--latent_window_size`` fixes its decode chunks), and the reference takes ``--fps`` from the file as
    well; the file records them, so the user need not repeat them. Considered are ``--fps`` and the
    architecture's own options; one given a value other than its default on the command line wins, and
    a recorded value that does not convert or validate is left out.
    """
    cls = type(options)
    names = own_option_names(cls, GenerateOptions) | {"fps"}
    changes = {}
    for field in option_fields(cls):
        text = metadata.get(field.name)
        if field.name not in names or text is None or getattr(options, field.name) != _default(field):
            continue
        try:
            value = coerce(text, field.type, from_text=True)
        except (TypeError, ValueError):
            continue
        if value != getattr(options, field.name):
            changes[field.name] = value
    if not changes:
        return options
    try:
        updated = attrs.evolve(options, **changes)
    except (ConfigError, TypeError, ValueError) as exc:
        log.warning(
            "%s: its recorded settings do not fit these options (%s); decoding without them", path, exc
        )
        return options
    log.info(
        "%s: decoding with its recorded %s", path.name, ", ".join(f"{k}={v}" for k, v in changes.items())
    )
    return updated


def _default(field: attrs.Attribute) -> Any:
    default = field.default
    return default.factory() if isinstance(default, attrs.Factory) else default  # type: ignore[arg-type]


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
