"""LoRA / LyCORIS files at generation: checked before any model loads, merged into the loaded denoiser,
or saved merged with ``--save_merged_model``.

Each file is read in whatever layout its network type understands (for LoRA: kohya / musubi-tuner,
diffusers / PEFT, ComfyUI, HunyuanVideo; see the network type's ``normalize_weights``), filtered by its
``--include_patterns`` / ``--exclude_patterns`` on the normalized names (as the reference tool does), and
added with its ``--lora_multiplier``: several files combine linearly. Tensors that match no layer are listed
once per file; a file of which nothing matches is an error that says what the file looks like.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tuner_core.architecture import Architecture, ModelLayout
from tuner_core.cache.store import atomic_write_safetensors
from tuner_core.commands.result import CommandResult
from tuner_core.components import Components
from tuner_core.config.generate_options import GenerateOptions
from tuner_core.errors import ConfigError, TunerError
from tuner_core.memory.apply import load_transform
from tuner_core.network import NetworkType
from tuner_core.plugins import Plugins
from tuner_core.training.model_setup import memory_settings
from tuner_core.weights import checkpoint_layer_paths

log = logging.getLogger(__name__)

#: Where a PEFT adapter keeps its config (``lora_alpha``...), beside ``adapter_model.safetensors``.
PEFT_CONFIG = "adapter_config.json"
#: diffusers' metadata key for the same config inside the file.
ADAPTER_METADATA_KEY = "lora_adapter_metadata"
#: How many unmatched layers a warning names.
LISTED = 12
_PART = re.compile(r"\.(lora_(down|up|A|B)\.weight|alpha|dora_scale|(hada|lokr)_\w+|diff(_b)?)$")


def _filtered(
    weights: dict[str, torch.Tensor | None], include: str | None, exclude: str | None
) -> dict[str, torch.Tensor | None]:
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


def file_metadata(path: Path) -> dict[str, str]:
    """The safetensors metadata of ``path``, with a PEFT ``adapter_config.json`` beside it folded in (under
    diffusers' ``lora_adapter_metadata`` key, which holds the same config) when the file has none."""
    with safe_open(str(path), "pt") as handle:
        metadata = dict(handle.metadata() or {})
    config = path.with_name(PEFT_CONFIG)
    if ADAPTER_METADATA_KEY not in metadata and config.is_file():
        try:
            metadata[ADAPTER_METADATA_KEY] = json.dumps(json.loads(config.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            log.warning("%s: ignored, not readable JSON (%s)", config, exc)
    return metadata


def looks_like(network_types: list[NetworkType], layout: ModelLayout, keys: set[str]) -> str:
    """``"; it looks like an SDXL text-encoder LoRA"`` when a network type can tell, else ``""``."""
    for network_type in network_types:
        what = network_type.describe_weights(layout, keys)
        if what:
            return f"; it looks like {what}"
    return ""


def _layer_names(keys: list[str]) -> list[str]:
    """Unmatched tensor names shown once per layer (``x.lora_down.weight`` and ``x.lora_up.weight`` are ``x``)."""
    return sorted({_PART.sub("", k) for k in keys})


def network_file_problems(
    options: GenerateOptions, plugins: Plugins, architecture: Architecture | None = None
) -> list[str]:
    """Pre-flight of ``--lora_weight``: each file's tensor names (its header only, no weights) must be known
    to an installed network type, and the patterns must be valid regular expressions that leave something."""
    if not options.lora_weight:
        return []
    try:
        network_types = _network_types(options, plugins)
    except ConfigError as exc:
        return [f"--lycoris: {exc}"]
    layout = architecture.layout if architecture is not None else ModelLayout()
    layout_name = architecture.name if architecture is not None else "?"
    layers = _denoiser_layers(options, architecture)
    problems = []
    for index, path in enumerate(options.lora_weight):
        if not path.is_file():
            continue  # reported with the other missing inputs
        try:
            with safe_open(str(path), "pt") as handle:
                names: dict[str, torch.Tensor | None] = dict.fromkeys(handle.keys())
        except Exception as exc:  # safetensors has its own error types for a file that is not one
            problems.append(f"--lora_weight {path}: not a safetensors file ({exc})")
            continue
        network_type = next((n for n in network_types if n.can_load(set(names))), None)
        if network_type is None:
            problems.append(
                f"--lora_weight {path}: no installed network type ("
                + ", ".join(n.name for n in network_types)
                + f") recognises its tensors (e.g. {', '.join(sorted(names)[:2]) or 'none'})"
                + looks_like(network_types, layout, set(names))
            )
            continue
        try:
            kept = _filtered(network_type.normalize_weights(layout, names), *_patterns(options, index))
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if not kept:
            problems.append(f"--lora_weight {path}: --include_patterns / --exclude_patterns leave no tensor")
        elif layers is not None and network_type.matches_layers(layout, set(kept), layers) is False:
            problems.append(
                f"--lora_weight {path}: none of its layers is a layer of this --arch {layout_name} model "
                f"(e.g. {sorted(kept)[0]}){looks_like(network_types, layout, set(names))}; is it a LoRA for "
                "another model?"
            )
    return problems


def _denoiser_layers(options: GenerateOptions, architecture: Architecture | None) -> list[str] | None:
    """The layer paths in the denoiser checkpoint's header (no weights read); ``None`` if there is none."""
    if architecture is None:
        return None
    path = architecture.component_path(architecture.trained_component, options)
    if path is None or not path.exists():
        return None
    try:
        return checkpoint_layer_paths(path) or None
    except TunerError:
        return None  # an unreadable checkpoint is reported by the loader, with its own message


def _merge_file(
    model: torch.nn.Module,
    path: Path,
    options: GenerateOptions,
    index: int,
    architecture: Architecture,
    network_types: list[NetworkType],
) -> None:
    """Merge one ``--lora_weight`` file into ``model``."""
    layout = architecture.layout
    loaded: dict[str, torch.Tensor] = load_file(str(path))
    network_type = next((n for n in network_types if n.can_load(set(loaded))), None)
    if network_type is None:  # pre-flight checked the names; only a file changed since could get here
        raise ConfigError(
            f"--lora_weight {path}: no installed network type recognises its tensors"
            + looks_like(network_types, layout, set(loaded))
        )
    normalized = network_type.normalize_weights(layout, loaded, file_metadata(path))
    weights = _filtered(normalized, *_patterns(options, index))
    multiplier = _multiplier(options, index)
    tensors = {k: v for k, v in weights.items() if v is not None}
    unused = network_type.merge_into(model, layout, tensors, multiplier)
    if tensors and len(unused) == len(tensors):
        raise ConfigError(
            f"--lora_weight {path}: none of its {len(loaded)} tensors matches a layer of this --arch "
            f"{architecture.name} model"
            + looks_like(network_types, layout, set(loaded))
            + f" (e.g. {sorted(loaded)[0]})"
        )
    if unused:
        layers = _layer_names(unused)
        log.warning(
            "%s: %d tensors (%d layers) matched no layer of the model and were not merged: %s%s",
            path.name,
            len(unused),
            len(layers),
            ", ".join(layers[:LISTED]),
            f" and {len(layers) - LISTED} more" if len(layers) > LISTED else "",
        )
    log.info("merged %s (%s) with multiplier %g", path.name, network_type.name, multiplier)


def merge_networks(
    model: torch.nn.Module, options: GenerateOptions, architecture: Architecture, plugins: Plugins
) -> None:
    """Merge every ``--lora_weight`` file into ``model`` with its multiplier and patterns (in file order; the
    updates add up, so the result is the base plus the sum of ``multiplier * update`` of the files)."""
    network_types = _network_types(options, plugins)
    for index, path in enumerate(options.lora_weight):
        _merge_file(model, path, options, index, architecture, network_types)


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
