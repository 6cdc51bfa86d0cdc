"""LoRA over a whole model: target selection from the architecture's layout, saving, and merging."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from tuner_core import ConfigError, ConvertedWeights, ModelLayout, NetworkType
from tuner_lora import formats
from tuner_lora.lora_module import LoRAModule

log = logging.getLogger(__name__)

SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")


def lora_name(prefix: str, module_path: str) -> str:
    """The saved name of the adapter on ``module_path``: ``lora_unet_transformer_blocks_0_attn_to_q``."""
    return f"{prefix}_{module_path.replace('.', '_')}"


def arg_patterns(args: Mapping[str, Any], key: str) -> list[re.Pattern[str]]:
    """The regular expressions of a list argument (``exclude_patterns=[...]``; one string is a list of one)."""
    value = args.get(key) or []
    if isinstance(value, str):
        value = [value]
    try:
        return [re.compile(p) for p in value]
    except re.error as exc:
        raise ConfigError(f"--network_args {key}: invalid regular expression: {exc}") from exc


def flag(args: Mapping[str, Any], key: str) -> bool:
    """A yes/no network argument: ``verbose=True`` (also ``true``, ``1``, ``yes``)."""
    value = args.get(key, False)
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def layer_choices(
    model: nn.Module, layout: ModelLayout, args: Mapping[str, Any]
) -> Iterator[tuple[str, nn.Module, bool]]:
    """``(module path, layer, excluded)`` of every layer LoRA could wrap, in model order.

    Layers are the Linear layers (and 1x1 convolutions, or any convolution with ``conv_dim``) inside
    modules whose class is one of ``layout.network_targets``. A path is excluded when the layout's
    ``network_exclude`` or ``exclude_patterns`` match it in full and no ``include_patterns`` does.
    """
    exclude = [re.compile(p) for p in layout.network_exclude] + arg_patterns(args, "exclude_patterns")
    include = arg_patterns(args, "include_patterns")
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
            seen.add(path)
            excluded = any(p.fullmatch(path) for p in exclude)
            yield path, child, excluded and not any(p.fullmatch(path) for p in include)


def target_layers(
    model: nn.Module, layout: ModelLayout, args: Mapping[str, Any]
) -> Iterator[tuple[str, nn.Module]]:
    """``(module path, layer)`` of every layer LoRA wraps (see :func:`layer_choices`), in model order."""
    for path, layer, excluded in layer_choices(model, layout, args):
        if not excluded:
            yield path, layer


def _log_targets(modules: list[LoRAModule], excluded: list[str]) -> None:
    """``verbose=True``: every adapter with its rank and alpha, then the layers left out."""
    log.info("LoRA target modules (%d):", len(modules))
    for module in modules:
        log.info("  %-60s rank %d, alpha %g", module.lora_name, module.rank, float(module.alpha))
    for path in excluded:
        log.info("  excluded: %s", path)


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

    @torch.no_grad()
    def apply_max_norm_regularization(
        self, max_norm: float, device: torch.device
    ) -> tuple[int, float, float]:
        """``--scale_weight_norms``: cap the Frobenius norm of each update ``up @ down * alpha / rank``.

        As the reference computes it: ``norm`` is clamped below at ``max_norm / 2``, an update above
        ``max_norm`` has both its matrices scaled by ``sqrt(max_norm / norm)``, and the figures returned are
        ``(updates scaled, mean norm, max norm)`` after scaling. One host sync for all adapters.
        """
        adapters = self.adapters()
        norms = torch.stack([_update_norm(a).to(device) for a in adapters])
        clamped = norms.clamp(min=max_norm / 2)
        ratios = clamped.clamp(max=max_norm) / clamped
        for adapter, ratio in zip(adapters, ratios.sqrt(), strict=True):
            # Multiplying by exactly 1.0 leaves an update below the cap bit for bit as it was.
            adapter.lora_up.weight.mul_(ratio.to(adapter.lora_up.weight))
            adapter.lora_down.weight.mul_(ratio.to(adapter.lora_down.weight))
        scaled = norms * ratios
        keys_scaled, mean_norm, max_norm_after = torch.stack(
            [(ratios != 1).sum().to(scaled.dtype), scaled.mean(), scaled.max()]
        ).tolist()
        return int(keys_scaled), mean_norm, max_norm_after


def _update_norm(adapter: LoRAModule) -> torch.Tensor:
    """``||up @ down|| * scale`` (Frobenius), from two rank x rank products unless a kxk conv needs the full
    update: ``||U D||^2 = sum((U^T U) * (D D^T))``."""
    down = adapter.lora_down.weight.float()
    if down.dim() > 2 and any(k != 1 for k in down.shape[2:]):
        return adapter.delta_weight().norm()
    up = adapter.lora_up.weight.float().flatten(1)
    down = down.flatten(1)
    squared = ((up.T @ up) * (down @ down.T)).sum().clamp(min=0)
    return squared.sqrt() * adapter.scale


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
        """Wrap every target layer of ``model`` with a fresh adapter of rank ``dim``.

        ``conv_dim`` / ``conv_alpha`` give kxk convolutions their own rank and alpha; ``rank_dropout``,
        ``module_dropout`` and ``--network_dropout`` act in training only; ``verbose=True`` logs the targets.
        """
        conv_dim = args.get("conv_dim")
        conv_alpha = _number(args, "conv_alpha")

        def shape(name: str, layer: nn.Module) -> tuple[int, float | None]:
            if isinstance(layer, (nn.Conv2d, nn.Conv3d)) and any(k != 1 for k in layer.kernel_size):
                return int(conv_dim), conv_alpha if conv_alpha is not None else alpha
            return dim, alpha

        return self._build(model, layout, args, shape, dropout=dropout, multiplier=multiplier)

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
    ) -> LoRANetwork:
        """``--dim_from_weights``, as the reference: each target layer named in ``weights`` gets the rank of
        its ``lora_down`` and its saved alpha; target layers the file does not name get no adapter."""
        ranks = {
            k[: -len(".lora_down.weight")]: int(v.shape[0])
            for k, v in weights.items()
            if k.endswith(".lora_down.weight")
        }
        if not ranks:
            raise ConfigError(
                "--dim_from_weights: --network_weights holds no lora_down weights to read the ranks from"
            )

        def shape(name: str, layer: nn.Module) -> tuple[int, float | None] | None:
            if name not in ranks:
                return None
            saved = weights.get(f"{name}.alpha")
            return ranks[name], float(saved) if saved is not None else None

        return self._build(model, layout, args, shape, dropout=dropout, multiplier=multiplier)

    def _build(
        self,
        model: nn.Module,
        layout: ModelLayout,
        args: Mapping[str, Any],
        shape: Callable[[str, nn.Module], tuple[int, float | None] | None],
        *,
        dropout: float | None,
        multiplier: float,
    ) -> LoRANetwork:
        """The network of adapters ``shape(name, layer) -> (rank, alpha)`` asks for (``None``: no adapter)."""
        modules, excluded = [], []
        for path, layer, left_out in layer_choices(model, layout, args):
            name = lora_name(layout.network_prefix, path)
            wanted = None if left_out else shape(name, layer)
            if wanted is None:
                excluded.append(path)
                continue
            rank, module_alpha = wanted
            modules.append(
                LoRAModule(
                    name,
                    layer,
                    rank=rank,
                    alpha=module_alpha,
                    multiplier=multiplier,
                    dropout=dropout,
                    rank_dropout=_number(args, "rank_dropout"),
                    module_dropout=_number(args, "module_dropout"),
                )
            )
        if flag(args, "verbose"):
            _log_targets(modules, excluded)
        return LoRANetwork(modules, loraplus_lr_ratio=_number(args, "loraplus_lr_ratio"))

    def can_load(self, keys: set[str]) -> bool:
        """LoRA files in any layout of :mod:`tuner_lora.formats`: ``lora_down``/``lora_up`` (kohya) or
        ``lora_A``/``lora_B`` (diffusers / PEFT) tensors, not only for a text encoder. DoRA files (a
        ``dora_scale`` per layer) are not plain LoRA: merged as LoRA they would lose their magnitudes, so
        they are left to the LyCORIS type, which merges them whole."""
        return formats.is_lora(keys, "lora_unet") and not any(k.endswith(".dora_scale") for k in keys)

    def normalize_weights(
        self,
        layout: ModelLayout,
        weights: Mapping[str, torch.Tensor | None],
        metadata: Mapping[str, str] | None = None,
    ) -> dict[str, torch.Tensor | None]:
        """The file under tuner's names; tensors no layout explains keep their own names (reported unused)."""
        converted = _converted(layout, weights, metadata)
        return {**converted.weights, **{k: weights[k] for k in converted.unused}}

    def matches_layers(self, layout: ModelLayout, keys: set[str], layer_paths: Sequence[str]) -> bool | None:
        """Whether any ``<prefix>_<module>`` name of the file is a layer of the model."""
        names = formats.kohya_names(layer_paths, layout.network_prefix)
        modules = {key.split(".", 1)[0] for key in keys}
        return any(m in names.paths or m in names.ambiguous for m in modules)

    def describe_weights(self, layout: ModelLayout, keys: set[str]) -> str | None:
        """What the file looks like (``an SDXL text-encoder LoRA``), from its tensor names."""
        return formats.describe(keys, layout.network_prefix)

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
        """The file in another tool's layout (see :mod:`tuner_lora.formats.files`); tensors never change."""
        from tuner_lora.formats.files import TARGETS, convert_weights

        try:
            tensors, meta, used_prefix = convert_weights(
                weights,
                metadata,
                target,
                module_paths=module_paths,
                network_prefix=layout.network_prefix,
                diffusers_prefix=prefix,
                hunyuan_layout=formats.hunyuan.applies_to(layout.block_lists),
            )
        except formats.ConversionError as exc:
            raise ConfigError(str(exc)) from exc
        layers = sum(1 for k in tensors if k.endswith((".lora_down.weight", ".lora_A.weight")))
        sources = tuple(sorted(formats.lora_layouts(weights, layout.network_prefix)))
        return ConvertedWeights(tensors, meta, TARGETS[target][0], sources, layers, used_prefix)

    def merge_into(
        self,
        model: nn.Module,
        layout: ModelLayout,
        weights: Mapping[str, torch.Tensor],
        multiplier: float,
    ) -> list[str]:
        """Add ``multiplier * up @ down * alpha / rank`` to each matching layer's weight, in place.

        Files in the other layouts of :mod:`tuner_lora.formats` are converted first; the names returned
        are the file's own.
        """
        converted = _converted(layout, weights, None)
        layers = {
            lora_name(layout.network_prefix, path): module
            for path, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d))
        }
        unused = _merge(layers, converted.weights, multiplier)
        return sorted(set(converted.unused) | {converted.origin.get(k, k) for k in unused})

    def metadata(self, dim: int, alpha: float, args: Mapping[str, Any]) -> dict[str, str]:
        """``ss_network_*`` keys of the reference tool."""
        return {
            "ss_network_module": "networks.lora",
            "ss_network_dim": str(dim),
            "ss_network_alpha": str(alpha),
        }


def _converted(
    layout: ModelLayout, weights: Mapping[str, torch.Tensor | None], metadata: Mapping[str, str] | None
) -> formats.Converted:
    return formats.to_tuner(
        weights,
        layout.network_prefix,
        metadata=metadata,
        hunyuan_layout=formats.hunyuan.applies_to(layout.block_lists),
    )


def _merge(
    layers: Mapping[str, nn.Module], weights: Mapping[str, torch.Tensor], multiplier: float
) -> set[str]:
    """Merge tuner-named ``weights`` into ``layers`` (by saved name); return the names left unused."""
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
        # Built on the weight's device: a DiT streaming onto the GPU merges there, not on the CPU.
        with torch.device(layer.weight.device):
            adapter = LoRAModule(name, layer, rank=rank, alpha=alpha)
        adapter.lora_down.weight.data.copy_(down)
        adapter.lora_up.weight.data.copy_(up)
        delta = adapter.delta_weight() * multiplier
        with torch.no_grad():
            layer.weight.copy_((layer.weight.float() + delta).to(layer.weight.dtype))
        up_bias = weights.get(f"{name}.lora_up.bias")
        if up_bias is not None:  # PEFT's lora_bias: the up projection's bias, scaled like the update
            _add_to_bias(layer, up_bias.float().to(layer.weight.device) * adapter.scale * multiplier)
        used.update({key, f"{name}.lora_up.weight", f"{name}.lora_up.bias", f"{name}.alpha"})
    return set(weights) - used


@torch.no_grad()
def _add_to_bias(layer: nn.Module, update: torch.Tensor) -> None:
    """Add ``update`` (float32) to ``layer``'s bias, rounding once; a layer without one gets it as its bias."""
    if layer.bias is None:
        layer.bias = nn.Parameter(update.to(layer.weight.dtype), requires_grad=False)
    else:
        layer.bias.copy_((layer.bias.float() + update.to(layer.bias.device)).to(layer.bias.dtype))
