"""LoRA / LyCORIS files at generation: checked before any model loads, merged into the loaded denoiser,
or saved merged with ``--save_merged_model``."""

from __future__ import annotations

import logging
import re

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tuner_core.architecture import Architecture
from tuner_core.cache.store import atomic_write_safetensors
from tuner_core.commands.result import CommandResult
from tuner_core.components import Components
from tuner_core.config.generate_options import GenerateOptions
from tuner_core.errors import ConfigError
from tuner_core.memory.apply import load_transform
from tuner_core.network import NetworkType
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


def _multiplier(options: GenerateOptions, index: int) -> float:
    multipliers = options.lora_multiplier
    if not multipliers:
        return 1.0
    return multipliers[index if len(multipliers) > 1 else 0]


def _patterns(options: GenerateOptions, index: int) -> tuple[str | None, str | None]:
    include = options.include_patterns[index] if index < len(options.include_patterns) else None
    exclude = options.exclude_patterns[index] if index < len(options.exclude_patterns) else None
    return include, exclude


def _network_types(options: GenerateOptions, plugins: Plugins) -> list[NetworkType]:
    return [plugins.network("lycoris")] if options.lycoris else list(plugins.networks())


def network_file_problems(options: GenerateOptions, plugins: Plugins) -> list[str]:
    """Pre-flight of ``--lora_weight``: each file's tensor names (its header only, no weights) must be known
    to an installed network type, and the patterns must be valid regular expressions."""
    if not options.lora_weight:
        return []
    try:
        network_types = _network_types(options, plugins)
    except ConfigError as exc:
        return [f"--lycoris: {exc}"]
    problems = []
    for index, path in enumerate(options.lora_weight):
        if not path.is_file():
            continue  # reported with the other missing inputs
        try:
            with safe_open(str(path), "pt") as handle:
                names: dict[str, None] = dict.fromkeys(handle.keys())
        except Exception as exc:  # safetensors has its own error types for a file that is not one
            problems.append(f"--lora_weight {path}: not a safetensors file ({exc})")
            continue
        try:
            kept = set(_filtered(names, *_patterns(options, index)))
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if not any(n.can_load(kept) for n in network_types):
            problems.append(
                f"--lora_weight {path}: no installed network type ("
                + ", ".join(n.name for n in network_types)
                + f") recognises its tensors (e.g. {', '.join(sorted(kept)[:2]) or 'none left by the patterns'})"
            )
    return problems


def merge_networks(
    model: torch.nn.Module, options: GenerateOptions, architecture: Architecture, plugins: Plugins
) -> None:
    """Merge every ``--lora_weight`` file into ``model`` with its multiplier and patterns."""
    network_types = _network_types(options, plugins)
    for index, path in enumerate(options.lora_weight):
        weights = _filtered(load_file(str(path)), *_patterns(options, index))
        network_type = next((n for n in network_types if n.can_load(set(weights))), None)
        if network_type is None:  # pre-flight checked the names; only a file changed since could get here
            raise ConfigError(f"--lora_weight {path}: no installed network type recognises its tensors")
        multiplier = _multiplier(options, index)
        unused = network_type.merge_into(model, architecture.layout, weights, multiplier)
        if weights and len(unused) == len(weights):
            raise ConfigError(
                f"--lora_weight {path}: none of its {len(weights)} tensors matches a layer of this "
                f"--arch {architecture.name} model (e.g. {unused[0]}); is it a LoRA for another model?"
            )
        if unused:
            log.warning(
                "%s: %d tensors matched no layer of the model (e.g. %s)", path.name, len(unused), unused[0]
            )
        log.info("merged %s (%s) with multiplier %g", path.name, network_type.name, multiplier)


def save_merged_model(
    options: GenerateOptions, architecture: Architecture, plugins: Plugins, device: torch.device
) -> CommandResult:
    """Merge the ``--lora_weight`` files into the denoiser and save it to ``--save_merged_model``."""
    name = architecture.trained_component
    transforms = {
        name: load_transform(architecture.layout, memory_settings(options, training=False), plugins)
    }
    denoiser = Components(architecture, plugins, options, device, (name,), transforms=transforms).load(name)
    merge_networks(denoiser, options, architecture, plugins)
    atomic_write_safetensors(options.save_merged_model, denoiser.state_dict(), {})
    return CommandResult("generate", {"merged model": [options.save_merged_model]})
