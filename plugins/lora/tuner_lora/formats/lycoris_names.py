"""LyCORIS files (LoHa, LoKr) in the dotted spelling of diffusers, ComfyUI and PEFT, under kohya names.

ComfyUI reads LoHa / LoKr tensors under a dotted module path (``diffusion_model.transformer_blocks.0.attn.
to_q.hada_w1_a``) and PEFT saves its LoHa / LoKr adapters the same way after ``base_model.model.``, with the
alpha in ``adapter_config.json`` (``alpha``; ``r`` when it is missing) instead of a tensor. lycoris reads
kohya names (``lora_unet_transformer_blocks_0_attn_to_q.hada_w1_a``), so such files are renamed on load;
a layer without an alpha tensor gets the config's, so its scale is the one the file was trained with.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

import torch

from tuner_lora.formats.adapter_config import read_config
from tuner_lora.formats.names import PREFIX_GROUPS

T = TypeVar("T")
#: Tensor parts of LoHa / LoKr layers (and their alpha and DoRA scale) after a dotted module path.
_PART = re.compile(r"\.((?:hada|lokr)_\w+|alpha|dora_scale)$")
_FACTORS = re.compile(r"\.(hada|lokr)_")
#: Keys whose shape gives a layer's rank (PEFT's default alpha is the rank).
_RANK_PARTS = ("hada_w1_b", "lokr_w1_b", "lokr_w2_b")


def _split(key: str) -> tuple[str, str, str] | None:
    """``(prefix, module path, part)`` of a dotted LoHa / LoKr key; ``None`` for any other key."""
    match = _PART.search(key)
    if match is None:
        return None
    body, prefix = key[: match.start()], ""
    for group in PREFIX_GROUPS:  # at most one of each group, in this order
        found = next((p for p in group if body.startswith(p) and len(body) > len(p)), None)
        if found is not None:
            prefix, body = prefix + found, body[len(found) :]
    if "." not in body:
        return None  # kohya spelling already (or a single-word path: nothing to rename)
    return prefix, body, match.group(1)


def is_dotted_lycoris(keys: Mapping[str, Any] | set[str]) -> bool:
    """Whether LoHa / LoKr tensors come under dotted module paths."""
    return any(_FACTORS.search(k) and _split(k) is not None for k in keys)


def _alpha(config: Mapping[str, Any] | None, layer: Mapping[str, T]) -> torch.Tensor | None:
    """The layer's alpha from a PEFT config (``alpha``, else its rank), when it has no alpha tensor."""
    if config is None:
        return None
    if "alpha" in config:
        return torch.tensor(float(config["alpha"]))
    rank = next((t.shape[0] for part, t in layer.items() if part in _RANK_PARTS and t is not None), None)
    return torch.tensor(float(rank)) if rank is not None else None


def kohya_lycoris(
    weights: Mapping[str, T], network_prefix: str, metadata: Mapping[str, str] | None
) -> dict[str, T | torch.Tensor | None]:
    """``weights`` with every dotted LoHa / LoKr key under its kohya name (other keys unchanged), and an
    alpha tensor from the adapter config for each layer without one."""
    renamed: dict[str, Any] = {}
    layers: dict[str, dict[str, Any]] = {}
    prefixes: dict[str, str] = {}
    for key, tensor in weights.items():
        split = _split(key) if _FACTORS.search(key) or key.endswith((".alpha", ".dora_scale")) else None
        if split is None:
            renamed[key] = tensor
            continue
        prefix, path, part = split
        name = f"{network_prefix}_{path.replace('.', '_')}"
        renamed[f"{name}.{part}"] = tensor
        layers.setdefault(name, {})[part] = tensor
        prefixes[name] = prefix
    for name, parts in layers.items():
        if "alpha" not in parts and any(_FACTORS.search("." + p) for p in parts):
            alpha = _alpha(read_config(metadata, prefixes[name]), parts)
            if alpha is not None:
                renamed[f"{name}.alpha"] = alpha
    return renamed
