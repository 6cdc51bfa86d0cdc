"""What a network plugin (LoRA, LoHa, LoKr, LyCORIS, ...) provides to the core.

A network type is registered through :func:`~tuner_core.hookspecs.tuner_register_networks`. It creates
trainable adapters on any model from the model's :class:`~tuner_core.architecture.ModelLayout`, saves them
under the layout's ``network_prefix``, and merges saved weights back into a model for inference.

Optional parts (a network type works without them): :meth:`Network.apply_max_norm_regularization` makes
``--scale_weight_norms`` act on the network, and :meth:`NetworkType.create_from_weights` builds a network
shaped like a saved file for ``--dim_from_weights`` (the default reads one rank from ``lora_down`` tensors).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import attrs

from tuner_core.errors import ConfigError, NotSupportedError

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

    # Optional (looked up with ``getattr``): without it ``--scale_weight_norms`` warns and does nothing.
    def apply_max_norm_regularization(
        self, max_norm: float, device: torch.device
    ) -> tuple[int, float, float]:
        """Scale down every adapter whose weight update has a norm above ``max_norm`` (after an optimizer
        step); return ``(keys scaled, mean norm, max norm)`` of the updates after scaling."""


@attrs.frozen
class ConvertedWeights:
    """What :meth:`NetworkType.convert_weights` made: the tensors and metadata to write, and a description."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    #: The layout written (``tuner``, ``comfy``, ``diffusers``) and the layouts read.
    layout: str
    source_layouts: tuple[str, ...]
    layers: int
    prefix: str


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

    def create_from_weights(
        self,
        model: nn.Module,
        layout: ModelLayout,
        weights: Mapping[str, torch.Tensor],
        *,
        alpha: float,
        dropout: float | None,
        args: Mapping[str, Any],
        multiplier: float = 1.0,
    ) -> Network:
        """A fresh adapter shaped like the saved ``weights`` (``--dim_from_weights``), not yet loaded or applied.

        The default reads one rank from the first ``lora_down`` tensor and calls :meth:`create`; a type whose
        files hold a rank (and alpha) per module overrides it to follow each one, as the reference does.
        """
        for key, tensor in weights.items():
            if key.endswith("lora_down.weight"):
                return self.create(
                    model,
                    layout,
                    dim=int(tensor.shape[0]),
                    alpha=alpha,
                    dropout=dropout,
                    args=args,
                    multiplier=multiplier,
                )
        raise ConfigError(
            "--dim_from_weights: --network_weights holds no lora_down weights to read the rank from"
        )

    def check_args(self, args: Mapping[str, Any]) -> list[str]:
        """Problems with ``--network_args`` that show before any model loads (an unknown algorithm, say);
        one line each. None by default."""
        return []

    def matches_layers(self, layout: ModelLayout, keys: set[str], layer_paths: Sequence[str]) -> bool | None:
        """Whether a file with these (normalised) tensor names adapts any of the model's layers, known by
        their module paths from the checkpoint's header; ``None``: this type cannot tell (the default)."""
        return None

    def can_load(self, keys: set[str]) -> bool:
        """Whether a weights file with these tensor names is this network type (format sniffing)."""
        return False

    def normalize_weights(
        self,
        layout: ModelLayout,
        weights: Mapping[str, torch.Tensor | None],
        metadata: Mapping[str, str] | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """A loadable file's tensors under the names this type saves (other layouts of the same network,
        such as diffusers / PEFT names, converted); unchanged by default. Values may be ``None``: a check
        before loading converts names only. ``--include_patterns`` match the names returned here."""
        return dict(weights)

    def describe_weights(self, layout: ModelLayout, keys: set[str]) -> str | None:
        """What a file with these tensor names looks like ("an SDXL text-encoder LoRA"), for the error
        about a file that matches nothing; ``None``: this type cannot tell."""
        return None

    def convert_weights(
        self,
        weights: Mapping[str, torch.Tensor],
        metadata: Mapping[str, str],
        *,
        layout: ModelLayout,
        target: str,
        module_paths: Sequence[str],
        prefix: str | None = None,
    ) -> ConvertedWeights:
        """A saved file's tensors rewritten for another tool (``tuner convert-lora --target``).

        :param target: ``default`` / ``tuner`` / ``kohya`` (this type's own names), ``other`` / ``comfy``
            (ComfyUI), ``diffusers``.
        :param module_paths: the model's layers by module path (``model.named_modules()`` names).
        :param prefix: the component prefix of the diffusers / ComfyUI names (default per target).
        :raises ConfigError: when the file cannot be converted without losing a tensor.
        """
        raise NotSupportedError(f"network type {self.name!r} cannot convert its files")

    def merge_into(
        self,
        model: nn.Module,
        layout: ModelLayout,
        weights: Mapping[str, torch.Tensor],
        multiplier: float,
    ) -> list[str]:
        """Add saved adapter weights into ``model``'s weights in place; return the names left unused.

        The core also calls it on a one-layer stand-in (a module tree holding just the layer at its module
        path), with the tensors :meth:`layer_weights` grouped for that layer, to merge each weight while the
        checkpoint streams in, before fp8 quantises it.
        """
        raise NotImplementedError

    def layer_weights(
        self, layout: ModelLayout, weights: Mapping[str, torch.Tensor], module_paths: Sequence[str]
    ) -> dict[str, dict[str, torch.Tensor]]:
        """A loadable file's tensors (as :meth:`normalize_weights` names them) grouped by the module path of
        the layer each adapts; tensors of no layer among ``module_paths`` are left out.

        The default follows kohya's naming, which LoRA and LyCORIS files share: a layer's tensors are named
        ``<network_prefix>_<module path with dots as underscores>.<part>``. Where two module paths share that
        name, the last one gets the tensors, as when merging into a loaded model.
        """
        names = {f"{layout.network_prefix}_{path.replace('.', '_')}": path for path in module_paths}
        groups: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in weights.items():
            path = names.get(key.split(".", 1)[0])
            if path is not None:
                groups.setdefault(path, {})[key] = tensor
        return groups

    def metadata(self, dim: int, alpha: float, args: Mapping[str, Any]) -> dict[str, str]:
        """Metadata written into saved files (``ss_network_module``, ``ss_network_dim``, ...)."""
        return {}
