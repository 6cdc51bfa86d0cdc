"""LoRA over a whole model: target selection from the architecture's layout, saving, and merging."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from tuner_core import ConfigError, ModelLayout, NetworkType
from tuner_lora.lora_module import LoRAModule

SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")


def lora_name(prefix: str, module_path: str) -> str:
    """The saved name of the adapter on ``module_path``: ``lora_unet_transformer_blocks_0_attn_to_q``."""
    return f"{prefix}_{module_path.replace('.', '_')}"


def _patterns(args: Mapping[str, Any], key: str) -> list[re.Pattern[str]]:
    value = args.get(key) or []
    if isinstance(value, str):
        value = [value]
    try:
        return [re.compile(p) for p in value]
    except re.error as exc:
        raise ConfigError(f"--network_args {key}: invalid regular expression: {exc}") from exc


def target_layers(
    model: nn.Module, layout: ModelLayout, args: Mapping[str, Any]
) -> Iterator[tuple[str, nn.Module]]:
    """``(module path, layer)`` of every layer LoRA wraps, in model order.

    Layers are the Linear layers (and 1x1 convolutions, or any convolution with ``conv_dim``) inside
    modules whose class is one of ``layout.network_targets``. ``exclude_patterns`` and the layout's own
    ``network_exclude`` drop paths (full match); ``include_patterns`` brings back what they dropped.
    """
    exclude = [re.compile(p) for p in layout.network_exclude] + _patterns(args, "exclude_patterns")
    include = _patterns(args, "include_patterns")
    with_convs = args.get("conv_dim") is not None
    seen: set[str] = set()
    for parent_path, parent in model.named_modules():
        if type(parent).__name__ not in layout.network_targets:
            continue
        for child_path, child in parent.named_modules():
            path = f"{parent_path}.{child_path}" if parent_path else child_path
            if not child_path or path in seen:
                continue
            is_conv = isinstance(child, (nn.Conv2d, nn.Conv3d))
            if not isinstance(child, nn.Linear) and not (
                is_conv and (with_convs or all(k == 1 for k in child.kernel_size))
            ):
                continue
            excluded = any(p.fullmatch(path) for p in exclude)
            if excluded and not any(p.fullmatch(path) for p in include):
                continue
            seen.add(path)
            yield path, child


class LoRANetwork(nn.Module):
    """The set of :class:`LoRAModule` adapters of one model; its state dict is the saved file's content."""

    def __init__(self, modules: list[LoRAModule], loraplus_lr_ratio: float | None = None) -> None:
        super().__init__()
        if not modules:
            raise ConfigError(
                "LoRA found no layer to wrap: the architecture's network targets matched nothing "
                "(check --network_args include_patterns / exclude_patterns)"
            )
        for module in modules:
            self.add_module(module.lora_name, module)
        self.loraplus_lr_ratio = loraplus_lr_ratio

    def adapters(self) -> list[LoRAModule]:
        """The adapters, in model order."""
        return [m for m in self.children() if isinstance(m, LoRAModule)]

    def apply_to(self, model: nn.Module) -> None:
        """Route every wrapped layer's forward through its adapter."""
        for adapter in self.adapters():
            adapter.apply_to()

    def parameter_groups(self, learning_rate: float) -> list[dict[str, Any]]:
        """One group, or two with LoRA+ (``loraplus_lr_ratio``: ``lora_up`` learns faster)."""
        if not self.loraplus_lr_ratio:
            return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": learning_rate}]
        up = [p for n, p in self.named_parameters() if "lora_up" in n]
        down = [p for n, p in self.named_parameters() if "lora_up" not in n]
        return [
            {"params": down, "lr": learning_rate},
            {"params": up, "lr": learning_rate * self.loraplus_lr_ratio},
        ]

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """``{lora_name}.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` tensors."""
        return {k: v.detach() for k, v in self.state_dict().items()}

    def load_adapter_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load saved adapter weights; every adapter must be present with matching shapes."""
        missing, unexpected = self.load_state_dict(dict(state), strict=False)
        if missing or unexpected:
            raise ConfigError(
                "network weights do not fit this model: "
                + (f"missing {missing[:3]}{'...' if len(missing) > 3 else ''} " if missing else "")
                + (f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}" if unexpected else "")
            )

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """LoRA needs nothing special under gradient checkpointing."""


def _number(args: Mapping[str, Any], key: str) -> float | None:
    value = args.get(key)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--network_args {key} must be a number, got {value!r}") from None


class LoRANetworkType(NetworkType):
    """Plain LoRA in the kohya / musubi-tuner file format."""

    name: ClassVar[str] = "lora"
    aliases: ClassVar[tuple[str, ...]] = ("networks.lora", "networks.lora_framepack")

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
    ) -> LoRANetwork:
        """Wrap every target layer of ``model`` with a fresh adapter of rank ``dim``."""
        conv_dim = args.get("conv_dim")
        conv_alpha = _number(args, "conv_alpha")
        modules = []
        for path, layer in target_layers(model, layout, args):
            is_kxk_conv = isinstance(layer, (nn.Conv2d, nn.Conv3d)) and any(k != 1 for k in layer.kernel_size)
            rank = int(conv_dim) if is_kxk_conv else dim
            modules.append(
                LoRAModule(
                    lora_name(layout.network_prefix, path),
                    layer,
                    rank=rank,
                    alpha=conv_alpha if is_kxk_conv and conv_alpha is not None else alpha,
                    multiplier=multiplier,
                    dropout=dropout,
                    rank_dropout=_number(args, "rank_dropout"),
                    module_dropout=_number(args, "module_dropout"),
                )
            )
        return LoRANetwork(modules, loraplus_lr_ratio=_number(args, "loraplus_lr_ratio"))

    def can_load(self, keys: set[str]) -> bool:
        """kohya-style LoRA files have ``lora_down``/``lora_up`` tensors."""
        return any(k.endswith(".lora_down.weight") for k in keys)

    def merge_into(
        self,
        model: nn.Module,
        layout: ModelLayout,
        weights: Mapping[str, torch.Tensor],
        multiplier: float,
    ) -> list[str]:
        """Add ``multiplier * up @ down * alpha / rank`` to each matching layer's weight, in place."""
        layers = {
            lora_name(layout.network_prefix, path): module
            for path, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d))
        }
        used: set[str] = set()
        for key in weights:
            if not key.endswith(".lora_down.weight"):
                continue
            name = key[: -len(".lora_down.weight")]
            layer = layers.get(name)
            up = weights.get(f"{name}.lora_up.weight")
            if layer is None or up is None:
                continue
            down = weights[key]
            rank = down.shape[0]
            alpha_t = weights.get(f"{name}.alpha")
            alpha = float(alpha_t) if alpha_t is not None else float(rank)
            adapter = LoRAModule(name, layer, rank=rank, alpha=alpha)
            adapter.lora_down.weight.data.copy_(down)
            adapter.lora_up.weight.data.copy_(up)
            delta = adapter.delta_weight() * multiplier
            with torch.no_grad():
                layer.weight.copy_(
                    (layer.weight.float() + delta.to(layer.weight.device)).to(layer.weight.dtype)
                )
            used.update({key, f"{name}.lora_up.weight", f"{name}.alpha"})
        return sorted(set(weights) - used)

    def metadata(self, dim: int, alpha: float, args: Mapping[str, Any]) -> dict[str, str]:
        """``ss_network_*`` keys of the reference tool."""
        return {
            "ss_network_module": "networks.lora",
            "ss_network_dim": str(dim),
            "ss_network_alpha": str(alpha),
        }
