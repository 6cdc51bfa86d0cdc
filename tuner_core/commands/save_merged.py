"""``tuner generate --save_merged_model``: the denoiser with the ``--lora_weight`` files merged, saved.

The files merge into each weight as the checkpoint streams in, before ``--fp8`` / ``--fp8_scaled``
quantise it, so a model saved with ``--fp8_scaled`` holds the reference's ``scale_weight`` tensors and
loads in musubi-tuner as it is.
"""

from __future__ import annotations

import torch

from tuner_core.architecture import Architecture
from tuner_core.cache.store import atomic_write_safetensors
from tuner_core.commands.result import CommandResult
from tuner_core.components import Components
from tuner_core.config.generate_options import GenerateOptions
from tuner_core.memory.apply import load_transform
from tuner_core.network_files import lora_weight_files, merge_network_types
from tuner_core.network_merge import NetworkMerge
from tuner_core.plugins import Plugins
from tuner_core.training.model_setup import memory_settings
from tuner_core.weights import chain_transforms


def save_merged_model(
    options: GenerateOptions, architecture: Architecture, plugins: Plugins, device: torch.device
) -> CommandResult:
    """Merge the ``--lora_weight`` files into the denoiser and save it to ``--save_merged_model``."""
    name = architecture.trained_component
    merge = NetworkMerge(lora_weight_files(options), merge_network_types(options, plugins), architecture)
    strategies = load_transform(architecture.layout, memory_settings(options, training=False), plugins)
    transforms = {name: chain_transforms(merge, strategies)}
    denoiser = Components(architecture, plugins, options, device, (name,), transforms=transforms).load(name)
    merge.finish(denoiser)
    atomic_write_safetensors(options.save_merged_model, denoiser.state_dict(), {})
    return CommandResult("generate", {"merged model": [options.save_merged_model]})
