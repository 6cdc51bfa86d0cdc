"""``tuner generate``: load the components, merge LoRA / LyCORIS files, sample, write the video."""

from __future__ import annotations

import logging
import random
import re
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tuner_core.architecture import Architecture
from tuner_core.cache.store import atomic_write_safetensors
from tuner_core.commands.cache_run import resolve_device
from tuner_core.commands.result import CommandResult
from tuner_core.errors import ConfigError, NotAvailableError
from tuner_core.media.write import pad_to_even, to_uint8_frames, write_image, write_video
from tuner_core.memory.apply import apply_memory_strategies, check_memory_options
from tuner_core.options import CommandOptions
from tuner_core.plugins import Plugins
from tuner_core.training.model_setup import memory_settings

log = logging.getLogger(__name__)


def _filtered(
    weights: dict[str, torch.Tensor], include: str | None, exclude: str | None
) -> dict[str, torch.Tensor]:
    try:
        keep = {k: v for k, v in weights.items() if include is None or re.search(include, k)}
        return {k: v for k, v in keep.items() if exclude is None or not re.search(exclude, k)}
    except re.error as exc:
        raise ConfigError(
            f"--include_patterns / --exclude_patterns: invalid regular expression: {exc}"
        ) from exc


def merge_networks(
    model: torch.nn.Module, options: Any, architecture: Architecture, plugins: Plugins
) -> None:
    """Merge every ``--lora_weight`` file into ``model`` with its multiplier and patterns."""
    core = options.core
    for index, path in enumerate(core.lora_weight):
        if not path.is_file():
            raise ConfigError(f"--lora_weight {path} does not exist")
        multiplier = (
            core.lora_multiplier[index if len(core.lora_multiplier) > 1 else 0]
            if core.lora_multiplier
            else 1.0
        )
        include = core.include_patterns[index] if index < len(core.include_patterns) else None
        exclude = core.exclude_patterns[index] if index < len(core.exclude_patterns) else None
        weights = _filtered(load_file(str(path)), include, exclude)
        candidates = [plugins.network("lycoris")] if core.lycoris else list(plugins.networks())
        network_type = next((n for n in candidates if n.can_load(set(weights))), None)
        if network_type is None:
            raise ConfigError(
                f"--lora_weight {path}: no installed network type recognises this file's tensors"
            )
        unused = network_type.merge_into(model, architecture.layout, weights, multiplier)
        if unused:
            log.warning(
                "%s: %d tensors matched no layer of the model (e.g. %s)", path.name, len(unused), unused[0]
            )
        log.info("merged %s (%s) with multiplier %g", path.name, network_type.name, multiplier)


def run_generate(
    options: Any, arch_options: Any, *, architecture: Architecture, plugins: Plugins
) -> CommandResult:
    """Generate one video (or save the LoRA-merged model) and report the written files."""
    combined = CommandOptions(options, arch_options)
    if type(architecture).sample is Architecture.sample and options.save_merged_model is None:
        raise NotAvailableError(
            f"tuner generate --arch {architecture.name}: this architecture cannot sample yet"
        )
    if options.latent_path or options.output_type not in ("video", "images"):
        raise NotAvailableError(
            "--latent_path and latent --output_type values are not implemented yet; use video or images"
        )
    settings = memory_settings(options, training=False)
    check_memory_options(settings, plugins)
    device = resolve_device(options.device)
    models: dict[str, Any] = {}
    for component in architecture.components("generate", combined):
        models[component] = plugins.load_model(architecture, component, combined, device)
    denoiser = models[architecture.trained_component]
    if options.lora_weight:
        merge_networks(denoiser, combined, architecture, plugins)
    if options.save_merged_model is not None:
        atomic_write_safetensors(options.save_merged_model, denoiser.state_dict(), {})
        return CommandResult("generate", {"merged model": [options.save_merged_model]})
    apply_memory_strategies(
        denoiser, architecture.layout, memory_settings(options, training=False), plugins, device
    )

    request = architecture.generation_request(combined)
    seed = request.seed if request.seed is not None else random.randint(0, 2**31 - 1)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        video = plugins.sample(architecture, models, request, combined, generator)
    frames = to_uint8_frames(video)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}_{seed}"
    written: list[Path] = []
    if options.output_type == "images" or frames.shape[0] == 1:
        directory = options.save_path / stem
        written += [write_image(directory / f"{i:04d}.png", f) for i, f in enumerate(frames)]
    else:
        written.append(
            write_video(
                options.save_path / f"{stem}.mp4", pad_to_even(frames), options.fps, options={"crf": "16"}
            )
        )
    log.info("seed %d", seed)
    return CommandResult(
        "generate", {"video" if options.output_type == "video" else "images": written}, {"seed": seed}
    )
