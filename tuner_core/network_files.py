"""Network files a command merges into the denoiser (``--lora_weight`` in generate, ``--base_weights`` in
train): which files with which multipliers and patterns, how each is read, and what pre-flight checks.

Each file is read in whatever layout its network type understands (for LoRA: kohya / musubi-tuner,
diffusers / PEFT, ComfyUI, HunyuanVideo; see the network type's ``normalize_weights``) and filtered by its
``--include_patterns`` / ``--exclude_patterns`` on the normalized names, as the reference tool does.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import attrs
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tuner_core.architecture import Architecture, ModelLayout
from tuner_core.config.generate_options import GenerateOptions
from tuner_core.config.train_options import TrainOptions
from tuner_core.errors import ConfigError, TunerError
from tuner_core.network import NetworkType
from tuner_core.plugins import Plugins
from tuner_core.weights import checkpoint_layer_paths

log = logging.getLogger(__name__)

#: Where a PEFT adapter keeps its config (``lora_alpha``...), beside ``adapter_model.safetensors``.
PEFT_CONFIG = "adapter_config.json"
#: diffusers' metadata key for the same config inside the file.
ADAPTER_METADATA_KEY = "lora_adapter_metadata"


@attrs.frozen
class NetworkFile:
    """One network file to merge, with its multiplier and name filters (regular expressions, searched)."""

    path: Path
    multiplier: float = 1.0
    include: str | None = None
    exclude: str | None = None
    #: The option that named it, for messages (``--lora_weight``).
    option: str = "--lora_weight"


def lora_weight_files(options: GenerateOptions) -> list[NetworkFile]:
    """``--lora_weight`` with ``--lora_multiplier`` (one value applies to every file) and the patterns."""
    multipliers = options.lora_multiplier
    files = []
    for index, path in enumerate(options.lora_weight):
        multiplier = multipliers[index if len(multipliers) > 1 else 0] if multipliers else 1.0
        include = options.include_patterns[index] if index < len(options.include_patterns) else None
        exclude = options.exclude_patterns[index] if index < len(options.exclude_patterns) else None
        files.append(NetworkFile(path, multiplier, include, exclude, "--lora_weight"))
    return files


def base_weight_files(options: TrainOptions) -> list[NetworkFile]:
    """``--base_weights`` with ``--base_weights_multiplier`` (1.0 for a file without one)."""
    multipliers = options.base_weights_multiplier
    return [
        NetworkFile(path, multipliers[index] if index < len(multipliers) else 1.0, option="--base_weights")
        for index, path in enumerate(options.base_weights)
    ]


def merge_network_types(options: GenerateOptions | TrainOptions, plugins: Plugins) -> list[NetworkType]:
    """The network types that may read the files: LyCORIS alone under generate's ``--lycoris``, else all."""
    if isinstance(options, GenerateOptions) and options.lycoris:
        return [plugins.network("lycoris")]
    return list(plugins.networks())


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


def looks_like(network_types: Sequence[NetworkType], layout: ModelLayout, keys: set[str]) -> str:
    """``"; it looks like an SDXL text-encoder LoRA"`` when a network type can tell, else ``""``."""
    for network_type in network_types:
        what = network_type.describe_weights(layout, keys)
        if what:
            return f"; it looks like {what}"
    return ""


def filtered(weights: dict[str, torch.Tensor | None], file: NetworkFile) -> dict[str, torch.Tensor | None]:
    """The tensors whose (normalized) names ``file.include`` matches and ``file.exclude`` does not."""
    try:
        keep = {k: v for k, v in weights.items() if file.include is None or re.search(file.include, k)}
        return {k: v for k, v in keep.items() if file.exclude is None or not re.search(file.exclude, k)}
    except re.error as exc:
        raise ConfigError(
            f"--include_patterns / --exclude_patterns: invalid regular expression: {exc}"
        ) from exc


def _unknown(
    file: NetworkFile, network_types: Sequence[NetworkType], layout: ModelLayout, keys: set[str]
) -> str:
    return (
        f"{file.option} {file.path}: no installed network type ("
        + ", ".join(n.name for n in network_types)
        + f") recognises its tensors (e.g. {', '.join(sorted(keys)[:2]) or 'none'})"
        + looks_like(network_types, layout, keys)
    )


def read_network_file(
    file: NetworkFile, network_types: Sequence[NetworkType], layout: ModelLayout
) -> tuple[NetworkType, dict[str, torch.Tensor]]:
    """The network type that reads ``file`` and its tensors under that type's names, filtered.

    :raises ConfigError: no installed type recognises the file, or a pattern is invalid.
    """
    loaded: dict[str, torch.Tensor] = load_file(str(file.path))
    network_type = next((n for n in network_types if n.can_load(set(loaded))), None)
    if network_type is None:  # pre-flight checked the names; only a file changed since could get here
        raise ConfigError(_unknown(file, network_types, layout, set(loaded)))
    normalized = network_type.normalize_weights(layout, loaded, file_metadata(file.path))
    kept = filtered(normalized, file)
    return network_type, {k: v for k, v in kept.items() if v is not None}


def network_file_problems(
    files: Sequence[NetworkFile],
    network_types: Sequence[NetworkType],
    architecture: Architecture | None,
    layer_paths: Sequence[str] | None,
) -> list[str]:
    """Pre-flight of network files: each file's tensor names (its header only, no weights) must be known to
    an installed network type, the patterns must be valid regular expressions that leave something, and
    (given the denoiser checkpoint's ``layer_paths``) some layer of the file must be a layer of the model."""
    layout = architecture.layout if architecture is not None else ModelLayout()
    arch_name = architecture.name if architecture is not None else "?"
    problems = []
    for file in files:
        if not file.path.is_file():
            continue  # reported with the other missing inputs
        try:
            with safe_open(str(file.path), "pt") as handle:
                names: dict[str, torch.Tensor | None] = dict.fromkeys(handle.keys())
        except Exception as exc:  # safetensors has its own error types for a file that is not one
            problems.append(f"{file.option} {file.path}: not a safetensors file ({exc})")
            continue
        network_type = next((n for n in network_types if n.can_load(set(names))), None)
        if network_type is None:
            problems.append(_unknown(file, network_types, layout, set(names)))
            continue
        try:
            kept = filtered(network_type.normalize_weights(layout, names), file)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if not kept:
            problems.append(
                f"{file.option} {file.path}: --include_patterns / --exclude_patterns leave no tensor"
            )
        elif layer_paths and network_type.matches_layers(layout, set(kept), layer_paths) is False:
            problems.append(
                f"{file.option} {file.path}: none of its layers is a layer of this --arch {arch_name} model "
                f"(e.g. {sorted(kept)[0]}){looks_like(network_types, layout, set(names))}; is it a "
                "network for another model?"
            )
    return problems


def denoiser_layer_paths(
    options: GenerateOptions | TrainOptions, architecture: Architecture | None
) -> list[str] | None:
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
