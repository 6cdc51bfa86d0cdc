"""What a network plugin (LoRA, LoHa, LoKr, LyCORIS, ...) provides to the core.

A network type is registered through :func:`~tuner_core.hookspecs.tuner_register_networks`. It creates
trainable adapters on any model from the model's :class:`~tuner_core.architecture.ModelLayout`, saves them
under the layout's ``network_prefix``, and merges saved weights back into a model for inference.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tuner_core.architecture import ModelLayout


class Network(Protocol):
    """An adapter attached to a model (returned by :meth:`NetworkType.create`)."""

    def apply_to(self, model: nn.Module) -> None:
        """Insert the adapter into ``model`` so that its forward includes the adapter's contribution."""

    def parameter_groups(self, learning_rate: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups (a network may give some weights their own learning rate)."""

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter's weights under their saved names (for example ``lora_unet_..._lora_down.weight``)."""

    def load_adapter_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load weights saved by :meth:`adapter_state_dict` (warm start, resume)."""

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Tell the adapter whether the model recomputes activations (some adapters must know)."""


class NetworkType:
    """Base class of a network plugin's registered object."""

    #: Name used with ``--network_module`` (``"lora"``).
    name: ClassVar[str]
    #: Other ``--network_module`` values meaning this type (``"networks.lora_framepack"``).
    aliases: ClassVar[tuple[str, ...]] = ()

    def create(
        self,
        model: nn.Module,
        layout: ModelLayout,
        *,
        dim: int,
        alpha: float,
        dropout: float | None,
        args: Mapping[str, Any],
        multiplier: float = 1.0,
    ) -> Network:
        """Create a fresh trainable adapter for ``model`` (not yet applied)."""
        raise NotImplementedError

    def can_load(self, keys: set[str]) -> bool:
        """Whether a weights file with these tensor names is this network type (format sniffing)."""
        return False

    def merge_into(
        self,
        model: nn.Module,
        layout: ModelLayout,
        weights: Mapping[str, torch.Tensor],
        multiplier: float,
    ) -> list[str]:
        """Add saved adapter weights into ``model``'s weights in place; return the names left unused."""
        raise NotImplementedError

    def metadata(self, dim: int, alpha: float, args: Mapping[str, Any]) -> dict[str, str]:
        """Metadata written into saved files (``ss_network_module``, ``ss_network_dim``, ...)."""
        return {}
