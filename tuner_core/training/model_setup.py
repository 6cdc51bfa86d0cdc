"""Prepare what a run trains: load the denoiser, apply memory strategies, attach a network or unfreeze it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import nn

from tuner_core.architecture import Architecture, ModelLayout
from tuner_core.components import Components
from tuner_core.config.generate_options import GenerateOptions
from tuner_core.config.train_options import TrainOptions
from tuner_core.errors import ConfigError
from tuner_core.memory.apply import apply_memory_strategies, load_transform
from tuner_core.memory.strategy import MemorySettings
from tuner_core.network import Network, NetworkType
from tuner_core.network_files import NetworkFile, base_weight_files, merge_network_types, read_network_file
from tuner_core.network_merge import NetworkMerge
from tuner_core.plugins import Plugins
from tuner_core.training.optimizers import parse_optimizer_args
from tuner_core.weights import chain_transforms

log = logging.getLogger(__name__)

#: The rank of a network when neither --network_dim nor --dim_from_weights gives one.
DEFAULT_NETWORK_DIM = 4


class DenoiserStep(nn.Module):
    """The module accelerate prepares: the denoiser plus its network, called once per batch.

    Wrapping both in one module lets DDP/FSDP see the network's parameters (which live outside the
    denoiser's module tree) and keeps ``tuner_predict`` as the only model-specific call.
    """

    def __init__(
        self,
        architecture: Architecture,
        plugins: Plugins,
        model: nn.Module,
        network: nn.Module | None,
        options: Any,
    ) -> None:
        super().__init__()
        self.model = model
        self.network = network
        self._architecture = architecture
        self._plugins = plugins
        self._options = options

    def forward(
        self, batch: Mapping[str, torch.Tensor], noisy_latents: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """The prediction for one batch (``tuner_predict``: the architecture's, unless a plugin answers)."""
        return self._plugins.hook.tuner_predict(
            architecture=self._architecture,
            model=self.model,
            batch=batch,
            noisy_latents=noisy_latents,
            timesteps=timesteps,
            options=self._options,
        )

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a weights file holds: the network's adapter weights, or the whole denoiser when fine-tuning."""
        if self.network is not None:
            return self.network.adapter_state_dict()  # type: ignore[operator]
        return {k: v.detach() for k, v in self.model.state_dict().items()}

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load what :meth:`trainable_state_dict` returned."""
        if self.network is not None:
            self.network.load_adapter_state_dict(state)  # type: ignore[operator]
        else:
            self.model.load_state_dict(dict(state))


@attrs.frozen
class PreparedModel:
    """The result of :func:`prepare_model`."""

    step: DenoiserStep
    param_groups: list[dict[str, Any]]
    network_type: NetworkType | None
    network_args: dict[str, Any]
    network_dim: int | None
    memory_strategies: list[str]


def memory_settings(options: TrainOptions | GenerateOptions, *, training: bool) -> MemorySettings:
    """The memory options of ``tuner train`` or ``tuner generate`` as strategies read them.

    ``options`` itself rides along, so a strategy reads the options it declared (``settings.options``).
    """
    if isinstance(options, TrainOptions):
        return MemorySettings(
            fp8_base=options.fp8_base or options.fp8_scaled,  # --fp8_scaled implies it, as in the reference
            fp8_scaled=options.fp8_scaled,
            blocks_to_swap=options.blocks_to_swap,
            gradient_checkpointing=options.gradient_checkpointing,
            gradient_checkpointing_cpu_offload=options.gradient_checkpointing_cpu_offload,
            use_pinned_memory_for_block_swap=options.use_pinned_memory_for_block_swap,
            training=training,
            full_fine_tuning=training and options.network_module is None,
            options=options,
        )
    return MemorySettings(  # generate calls train's --fp8_base --fp8 and keeps no activations
        fp8_base=options.fp8 or options.fp8_scaled,
        fp8_scaled=options.fp8_scaled,
        blocks_to_swap=options.blocks_to_swap,
        use_pinned_memory_for_block_swap=options.use_pinned_memory_for_block_swap,
        training=training,
        options=options,
    )


def _saved_rank(weights: Mapping[str, torch.Tensor], default: int) -> int:
    """The rank recorded for ``--dim_from_weights``: the first ``lora_down``'s (modules may differ)."""
    for key, tensor in weights.items():
        if key.endswith("lora_down.weight"):
            return int(tensor.shape[0])
    return default


def _create_network(
    options: Any, model: nn.Module, layout: ModelLayout, network_type: NetworkType, args: dict[str, Any]
) -> tuple[Network, dict[str, torch.Tensor] | None, int]:
    """The network to train, the ``--network_weights`` to start it from (or ``None``) and its rank."""
    initial = None
    if options.network_weights is not None:
        if not options.network_weights.is_file():
            raise ConfigError(f"--network_weights {options.network_weights} does not exist")
        weights_file = NetworkFile(options.network_weights, option="--network_weights")
        initial = read_network_file(weights_file, [network_type], layout)[1]
    dim = options.network_dim or DEFAULT_NETWORK_DIM
    common = {"alpha": options.network_alpha, "dropout": options.network_dropout, "args": args}
    if options.dim_from_weights:
        if initial is None:
            raise ConfigError("--dim_from_weights needs --network_weights")
        network = network_type.create_from_weights(model, layout, initial, **common)
        return network, initial, _saved_rank(initial, dim)
    return network_type.create(model, layout, dim=dim, **common), initial, dim


def prepare_model(
    options: Any, architecture: Architecture, plugins: Plugins, device: torch.device
) -> PreparedModel:
    """Load the trained component and make it trainable: a network on top, or full fine-tuning."""
    settings = memory_settings(options, training=True)
    name = architecture.trained_component
    # --base_weights merge into each weight as it streams in (before fp8), as the reference merges them
    # before the network is created.
    merge = None
    if options.base_weights:
        merge = NetworkMerge(base_weight_files(options), merge_network_types(options, plugins), architecture)
    transforms = {name: chain_transforms(merge, load_transform(architecture.layout, settings, plugins))}
    # Block swap places each weight itself: the model loads on the CPU and never sits whole on the GPU.
    load_devices = {name: torch.device("cpu")} if settings.blocks_to_swap > 0 else None
    model: nn.Module = Components(
        architecture, plugins, options, device, (name,), transforms=transforms, load_devices=load_devices
    ).load(name)
    if merge is not None:
        merge.finish(model)
    applied = apply_memory_strategies(model, architecture.layout, settings, plugins, device)
    model.train()

    if options.network_module is None:
        params = architecture.trainable_parameters(model)
        wanted = {id(p) for p in params}
        for p in model.parameters():
            p.requires_grad_(id(p) in wanted)
        step = DenoiserStep(architecture, plugins, model, None, options)
        return PreparedModel(step, [{"params": params, "lr": options.learning_rate}], None, {}, None, applied)

    network_type = plugins.network(options.network_module)
    args = parse_optimizer_args(options.network_args, option="--network_args") if options.network_args else {}
    model.requires_grad_(False)
    network, initial, dim = _create_network(options, model, architecture.layout, network_type, args)
    if initial is not None:
        network.load_adapter_state_dict(initial)
        log.info("network weights loaded from %s", options.network_weights)
    network.apply_to(model)
    network.set_gradient_checkpointing(
        settings.gradient_checkpointing or settings.gradient_checkpointing_cpu_offload
    )
    if not isinstance(network, nn.Module):
        raise ConfigError(f"network type {network_type.name!r} did not return a torch module")
    network.to(device)
    step = DenoiserStep(architecture, plugins, model, network, options)
    return PreparedModel(
        step, network.parameter_groups(options.learning_rate), network_type, args, dim, applied
    )
