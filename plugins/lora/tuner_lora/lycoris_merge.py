"""LyCORIS files merged into a model through lycoris's own modules (``--lycoris``, ``--base_weights``).

Each layer a file names is rebuilt as the lycoris module its tensors describe (``lycoris.modules.get_module``
/ ``make_module``, as ``create_network_from_weights`` does), and the layer's weight becomes that module's
merged weight, computed in float32 and rounded once to the layer's dtype. Two lycoris defects are worked
around so that a merged model gives what the unmerged network gives:

- ``get_diff_weight`` / ``get_merged_weight`` of LoHa and LoKr apply ``alpha / rank`` twice (``get_weight``
  already applies it); the merge uses the update their forward adds, scaled once, which is also how other
  tools read those files;
- ``IA3Module.make_module_from_state_dict`` takes one tensor but is handed two; IA³ modules are built here.
"""

from __future__ import annotations

import copy
import importlib.util
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from tuner_core import ConfigError, ModelLayout
from tuner_lora.lora_network import lora_name

#: Tensor-name endings that mark a LyCORIS file (LoCon/DyLoRA, LoHa, LoKr, full, GLoRA, OFT/BOFT, IA³, norms).
LYCORIS_SUFFIXES = (
    ".lora_up.weight",
    ".hada_w1_a",
    ".lokr_w1",
    ".lokr_w1_a",
    ".diff",
    ".a1.weight",
    ".oft_blocks",
    ".on_input",
    ".w_norm",
)


def lycoris_available() -> bool:
    """Whether lycoris-lora is installed (checked without importing it: the import takes seconds)."""
    return importlib.util.find_spec("lycoris") is not None


def import_kohya() -> Any:
    """``lycoris.kohya``, or a :class:`ConfigError` saying how to install it."""
    if not lycoris_available():
        raise ConfigError("LyCORIS needs the lycoris-lora package: pip install lycoris-lora")
    try:
        import lycoris.kohya
    except ImportError as exc:  # installed but broken (a missing dependency of its own)
        raise ConfigError(f"lycoris-lora is installed but cannot be imported: {exc}") from exc
    return lycoris.kohya


def is_lycoris_file(keys: set[str]) -> bool:
    """Whether tensor names look like a LyCORIS (or kohya LoRA) file."""
    return any(key.endswith(LYCORIS_SUFFIXES) for key in keys)


def module_from_weights(
    weights: Mapping[str, torch.Tensor], name: str, layer: nn.Module
) -> tuple[nn.Module | None, list[str]]:
    """The lycoris module that ``weights`` describe for ``name`` on ``layer``, and the tensor names it uses
    (``(None, [])`` when no lycoris algorithm recognises them)."""
    from lycoris.modules import get_module, make_module
    from lycoris.modules.ia3 import IA3Module

    kind, params = get_module(weights, name)
    if kind is None:
        return None, []
    used = [f"{name}.{k}" for k in kind.weight_list if f"{name}.{k}" in weights]
    if "alpha" in kind.weight_list and f"{name}.alpha" not in weights:
        params = list(params)  # no alpha saved: lycoris reads alpha 0 as alpha = rank (a scale of 1)
        params[kind.weight_list.index("alpha")] = torch.tensor(0.0)
    if kind is IA3Module:
        weight, on_input = params
        module = IA3Module(name, layer, 1.0, train_on_input=bool(on_input))
        with torch.no_grad():
            module.weight.copy_(weight)
        return module, used
    return make_module(kind, params, name, layer), used


def merged_weight(module: nn.Module, multiplier: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's weight (and bias, or ``None``) with ``module`` merged at ``multiplier``."""
    from lycoris.modules.loha import LohaModule
    from lycoris.modules.lokr import LokrModule

    shape = module.org_weight.shape
    device = module.org_weight.device
    if isinstance(module, (LohaModule, LokrModule)):
        diff = module.get_weight(module.shape).reshape(shape) * module.scalar  # the forward's update
        base = module.org_weight.to(diff.dtype)
        if module.wd:
            return module.apply_weight_decompose(base + diff, multiplier), None
        return base + diff * multiplier, None
    return module.get_merged_weight(multiplier, shape, device)


def float32_twin(layer: nn.Module) -> nn.Module:
    """A float32 copy of ``layer`` on its device, for lycoris to compute the merge on (the model's own layer
    may be bf16 and has its forward routed through adapters)."""
    weight = layer.weight.detach()
    bias = getattr(layer, "bias", None)
    if isinstance(layer, nn.Linear):
        twin: nn.Module = nn.Linear(
            layer.in_features, layer.out_features, bias=bias is not None, device="meta"
        )
    elif isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        twin = type(layer)(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
            bias=bias is not None,
            device="meta",
        )
    else:  # a norm layer (lycoris's train_norm): small, copied whole
        return copy.deepcopy(layer).float()
    twin.weight = nn.Parameter(weight.float(), requires_grad=False)
    if bias is not None:
        twin.bias = nn.Parameter(bias.detach().float(), requires_grad=False)
    return twin


@torch.no_grad()
def merge_file_module(
    weights: Mapping[str, torch.Tensor], name: str, layer: nn.Module, multiplier: float
) -> list[str]:
    """Merge the lycoris module ``weights`` hold for ``name`` into ``layer`` in place (in float32, rounded
    once to the layer's dtype); return the tensor names used (none when no algorithm recognises them)."""
    twin = float32_twin(layer)
    module, used = module_from_weights(weights, name, twin)
    if module is None:
        return []
    module.to(device=twin.weight.device, dtype=torch.float32)
    module.eval()
    weight, bias = merged_weight(module, multiplier)
    layer.weight.copy_(weight.to(layer.weight.dtype))
    if bias is not None:
        if layer.bias is None:
            layer.bias = nn.Parameter(bias.to(layer.weight.dtype), requires_grad=False)
        else:
            layer.bias.copy_(bias.to(layer.bias.dtype))
    return used


def merge_lycoris(
    model: nn.Module, layout: ModelLayout, weights: Mapping[str, torch.Tensor], multiplier: float
) -> list[str]:
    """Merge every module of a LyCORIS file into ``model``; return the tensor names left unused."""
    import_kohya()
    layers = {
        lora_name(layout.network_prefix, path): layer
        for path, layer in model.named_modules()
        if path and isinstance(getattr(layer, "weight", None), torch.Tensor)
    }
    names: dict[str, list[str]] = defaultdict(list)
    for key in weights:
        names[key.split(".", 1)[0]].append(key)
    used: set[str] = set()
    for name in names:
        layer = layers.get(name)
        if layer is None:
            continue
        used.update(merge_file_module(weights, name, layer, multiplier))
    return sorted(set(weights) - used)
