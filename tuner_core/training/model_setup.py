"""Prepare what a run trains: load the denoiser, apply memory strategies, attach a network or unfreeze it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import attrs
import torch
from safetensors.torch import load_file
from torch import nn

from tuner_core.architecture import Architecture
from tuner_core.components import Components
from tuner_core.config.generate_options import GenerateOptions
from tuner_core.config.train_options import TrainOptions
from tuner_core.errors import ConfigError
from tuner_core.memory.apply import apply_memory_strategies, load_transform
from tuner_core.memory.strategy import MemorySettings
from tuner_core.network import Network, NetworkType
from tuner_core.plugins import Plugins
from tuner_core.training.optimizers import parse_optimizer_args

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
            fp8_base=options.fp8_base,
            fp8_scaled=options.fp8_scaled,
            blocks_to_swap=options.blocks_to_swap,
            gradient_checkpointing=options.gradient_checkpointing,
            gradient_checkpointing_cpu_offload=options.gradient_checkpointing_cpu_offload,
            use_pinned_memory_for_block_swap=options.use_pinned_memory_for_block_swap,
            training=training,
            options=options,
        )
    return MemorySettings(  # generate calls train's --fp8_base --fp8 and keeps no activations
        fp8_base=options.fp8,
        fp8_scaled=options.fp8_scaled,
        blocks_to_swap=options.blocks_to_swap,
        use_pinned_memory_for_block_swap=options.use_pinned_memory_for_block_swap,
        training=training,
        options=options,
    )


def _dim_from_weights(weights: Mapping[str, torch.Tensor]) -> int:
    for key, tensor in weights.items():
        if key.endswith("lora_down.weight"):
            return int(tensor.shape[0])
    raise ConfigError(
        "--dim_from_weights: --network_weights holds no lora_down weights to read the rank from"
    )


def prepare_model(
    options: Any, architecture: Architecture, plugins: Plugins, device: torch.device
) -> PreparedModel:
    """Load the trained component and make it trainable: a network on top, or full fine-tuning."""
    settings = memory_settings(options, training=True)
    name = architecture.trained_component
    transforms = {name: load_transform(architecture.layout, settings, plugins)}
    model: nn.Module = Components(
        architecture, plugins, options, device, (name,), transforms=transforms
    ).load(name)
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
    args = parse_optimizer_args(options.network_args) if options.network_args else {}
    initial = None
    if options.network_weights is not None:
        if not options.network_weights.is_file():
            raise ConfigError(f"--network_weights {options.network_weights} does not exist")
        initial = load_file(str(options.network_weights))
    dim = options.network_dim or DEFAULT_NETWORK_DIM
    if options.dim_from_weights:
        if initial is None:
            raise ConfigError("--dim_from_weights needs --network_weights")
        dim = _dim_from_weights(initial)
    model.requires_grad_(False)
    network: Network = network_type.create(
        model,
        architecture.layout,
        dim=dim,
        alpha=options.network_alpha,
        dropout=options.network_dropout,
        args=args,
    )
    if initial is not None:
        network.load_adapter_state_dict(initial)
        log.info("network weights loaded from %s", options.network_weights)
    network.apply_to(model)
    network.set_gradient_checkpointing(settings.gradient_checkpointing)
    if not isinstance(network, nn.Module):
        raise ConfigError(f"network type {network_type.name!r} did not return a torch module")
    network.to(device)
    step = DenoiserStep(architecture, plugins, model, network, options)
    return PreparedModel(
        step, network.parameter_groups(options.learning_rate), network_type, args, dim, applied
    )
