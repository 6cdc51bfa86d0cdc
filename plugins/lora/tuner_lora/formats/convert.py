"""Conversion of LoRA files between layouts: any supported layout to tuner's, and tuner's to diffusers / ComfyUI.

tuner's layout is the kohya / musubi-tuner one: ``{prefix}_{module path with _}.lora_down.weight``,
``.lora_up.weight`` and ``.alpha``. Reading another layout into it needs no model (a module path gives its
kohya name); writing diffusers names needs the model's module paths (:class:`~tuner_lora.formats.names.NameMap`).
Tensors are passed through unchanged wherever the layouts agree, so a round trip is bit-exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import attrs
import torch

from tuner_lora.formats import hunyuan
from tuner_lora.formats.adapter_config import METADATA_KEY, config_alpha, read_config, write_config
from tuner_lora.formats.names import ALPHA, DOWN, UP, UP_BIAS, LoraKey, kohya_name, kohya_names, parse_key

T = TypeVar("T", torch.Tensor, None)
SAVED = {DOWN: ".lora_down.weight", UP: ".lora_up.weight", UP_BIAS: ".lora_up.bias", ALPHA: ".alpha"}


class ConversionError(ValueError):
    """A file that cannot be converted without losing tensors."""


@attrs.frozen
class Converted:
    """A file's LoRA tensors under tuner's names.

    :param weights: ``{tuner name: tensor}`` (values ``None`` when only names were converted).
    :param unused: the file's keys that are no LoRA layer tuner can place (kept out of ``weights``).
    :param origin: ``{tuner name: the file key it came from}``, for messages about unmatched layers.
    """

    weights: dict[str, torch.Tensor | None]
    unused: list[str]
    origin: dict[str, str]


@attrs.define
class _Layer:
    """The tensor keys of one layer of the file."""

    key: LoraKey
    parts: dict[str, str]


def _layers(keys: Iterable[str], network_prefix: str) -> tuple[list[_Layer], list[str]]:
    """The file's layers (each with its down / up / alpha keys) and the keys that belong to none."""
    layers: dict[tuple[str, str], _Layer] = {}
    unused = []
    for key in keys:
        parsed = parse_key(key, network_prefix)
        if parsed is None:
            unused.append(key)
            continue
        layer = layers.setdefault((parsed.prefix, parsed.module), _Layer(parsed, {}))
        layer.parts[parsed.part] = key
    complete = [layer for layer in layers.values() if DOWN in layer.parts and UP in layer.parts]
    for layer in layers.values():
        if DOWN not in layer.parts or UP not in layer.parts:
            unused += layer.parts.values()
    return complete, unused


def _targets(layer: LoraKey, network_prefix: str, hunyuan_layout: bool) -> hunyuan.Target | str | None:
    """Where a layer goes: one tuner name (str), HunyuanVideo split targets, or ``None`` (unknown layer)."""
    if hunyuan_layout:
        original = layer.module if layer.dotted else hunyuan.kohya_path(layer.module)
        if original is not None and hunyuan.is_hunyuan_path(original):
            return hunyuan.target(original)
    if layer.dotted:
        return kohya_name(network_prefix, layer.module)
    return f"{network_prefix}_{layer.module}"


def _alpha(
    layer: _Layer, weights: Mapping[str, T], config: dict | None, rank: int | None
) -> torch.Tensor | None:
    """The layer's alpha tensor: from the file, from its adapter config, or rank (diffusers' convention)."""
    if ALPHA in layer.parts:
        return weights[layer.parts[ALPHA]]
    down = weights[layer.parts[DOWN]]
    if down is None or rank is None:
        return None
    value = config_alpha(config, layer.key.module, rank) if config is not None else float(rank)
    return torch.tensor(value, dtype=down.dtype)


@attrs.frozen
class _Piece:
    """One tuner layer made from a file layer: its name (or FramePack path) and tensors."""

    target: str
    down: Any
    up: Any
    alpha: torch.Tensor | None
    up_bias: Any = None


def _pieces(
    layer: _Layer, where: hunyuan.Target | str, weights: Mapping[str, T], alpha: torch.Tensor | None
) -> list[_Piece] | None:
    """The tuner layers a file layer becomes (``None``: its shapes do not split as the layout says). Split
    layers get copies, so the result can be saved as it is; an up bias splits with the up rows."""
    down, up = weights[layer.parts[DOWN]], weights[layer.parts[UP]]
    bias = weights[layer.parts[UP_BIAS]] if UP_BIAS in layer.parts else None
    if isinstance(where, str):
        return [_Piece(where, down, up, alpha, bias)]
    ups = hunyuan.split_up(up, down, where) if down is not None else [None] * len(where.paths)
    biases = [None] * len(where.paths)
    if bias is not None and down is not None:
        biases = hunyuan.split_up(bias, down, where)
    if ups is None or biases is None:
        return None
    pieces = []
    for index, (path, piece_up, piece_bias) in enumerate(zip(where.paths, ups, biases)):
        copy = index > 0 and down is not None
        piece_alpha = alpha.clone() if copy and alpha is not None else alpha
        if piece_bias is None and UP_BIAS in layer.parts:
            piece_bias = bias  # a names-only check: keep the part so its name is converted too
        pieces.append(_Piece(path, down.clone() if copy else down, piece_up, piece_alpha, piece_bias))
    return pieces


def to_tuner(
    weights: Mapping[str, T],
    network_prefix: str,
    *,
    metadata: Mapping[str, str] | None = None,
    hunyuan_layout: bool = True,
) -> Converted:
    """``weights`` of any supported layout under tuner's names (kohya files pass through unchanged).

    :param metadata: the file's metadata; diffusers keep alpha in it (``lora_adapter_metadata``).
    :param hunyuan_layout: map HunyuanVideo-layout names (``double_blocks``) onto FramePack's layers.
    """
    layers, unused = _layers(weights, network_prefix)
    out: dict[str, torch.Tensor | None] = {}
    origin: dict[str, str] = {}
    configs: dict[str, dict | None] = {}
    for layer in layers:
        where = _targets(layer.key, network_prefix, hunyuan_layout)
        if layer.key.dotted:
            if layer.key.prefix not in configs:
                configs[layer.key.prefix] = read_config(metadata, layer.key.prefix)
            down = weights[layer.parts[DOWN]]
            rank = None if down is None else int(down.shape[0])
            alpha = _alpha(layer, weights, configs[layer.key.prefix], rank)
        else:
            alpha = weights[layer.parts[ALPHA]] if ALPHA in layer.parts else None
        pieces = None if where is None else _pieces(layer, where, weights, alpha)
        if pieces is None:
            unused += layer.parts.values()
            continue
        for piece in pieces:
            name = piece.target if isinstance(where, str) else kohya_name(network_prefix, piece.target)
            out[name + SAVED[DOWN]], origin[name + SAVED[DOWN]] = piece.down, layer.parts[DOWN]
            out[name + SAVED[UP]], origin[name + SAVED[UP]] = piece.up, layer.parts[UP]
            if UP_BIAS in layer.parts:
                out[name + SAVED[UP_BIAS]], origin[name + SAVED[UP_BIAS]] = (
                    piece.up_bias,
                    layer.parts[UP_BIAS],
                )
            if piece.alpha is not None or ALPHA in layer.parts:
                out[name + SAVED[ALPHA]] = piece.alpha
                origin[name + SAVED[ALPHA]] = layer.parts.get(ALPHA, layer.parts[DOWN])
    return Converted(out, sorted(unused), origin)


def _grouped(weights: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Tuner-layout tensors by layer name."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        part = next((p for p, suffix in SAVED.items() if key.endswith(suffix)), None)
        if part is None:
            raise ConversionError(f"{key}: not a lora_down / lora_up / alpha tensor")
        layers.setdefault(key[: -len(SAVED[part])], {})[part] = tensor
    return layers


def to_diffusers(
    weights: Mapping[str, torch.Tensor],
    module_paths: Iterable[str],
    network_prefix: str,
    *,
    diffusers_prefix: str,
    alpha_tensors: bool,
    metadata: Mapping[str, str] | None = None,
    hunyuan_layout: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``weights`` (any supported layout) as ``{diffusers_prefix}{module path}.lora_A/lora_B.weight``.

    :param module_paths: the model's layers; a kohya name is mapped back only through these.
    :param alpha_tensors: keep alpha as ``{path}.alpha`` tensors (ComfyUI reads them); otherwise write it
        into diffusers' ``lora_adapter_metadata`` (what diffusers' own loading reads).
    :param hunyuan_layout: see :func:`to_tuner`.
    :returns: the tensors and the metadata to save (the input's, plus the adapter config when needed).
    :raises ConversionError: when a tensor would be lost: unknown to the layouts, or no layer of the model.
    """
    converted = _convertible(weights, network_prefix, metadata, hunyuan_layout)
    names = kohya_names(module_paths, network_prefix)
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    missing = []
    for name, parts in _grouped(converted.weights).items():
        path = names.path(name)
        if path is None:
            missing.append(
                name + (f" (could be any of {names.ambiguous[name]})" if name in names.ambiguous else "")
            )
            continue
        tensors[f"{diffusers_prefix}{path}.lora_A.weight"] = parts[DOWN]
        tensors[f"{diffusers_prefix}{path}.lora_B.weight"] = parts[UP]
        if UP_BIAS in parts:
            tensors[f"{diffusers_prefix}{path}.lora_B.bias"] = parts[UP_BIAS]
        rank = int(parts[DOWN].shape[0])
        alpha = parts.get(ALPHA)
        if alpha_tensors and alpha is not None:
            tensors[f"{diffusers_prefix}{path}.alpha"] = alpha
        ranks[path] = rank
        alphas[path] = float(alpha) if alpha is not None else float(rank)
    if missing:
        raise ConversionError(f"{len(missing)} layers match no module of the model: {_listing(missing)}")
    meta = {k: v for k, v in (metadata or {}).items() if k != METADATA_KEY}
    if not alpha_tensors and ranks:
        biased = any(k.endswith(".lora_B.bias") for k in tensors)
        meta[METADATA_KEY] = write_config(ranks, alphas, diffusers_prefix, lora_bias=biased)
    return tensors, meta


def tuner_file(
    weights: Mapping[str, torch.Tensor],
    network_prefix: str,
    metadata: Mapping[str, str] | None = None,
    hunyuan_layout: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``weights`` (any supported layout) in tuner's layout, with the metadata to save."""
    converted = _convertible(weights, network_prefix, metadata, hunyuan_layout)
    meta = {k: v for k, v in (metadata or {}).items() if k != METADATA_KEY}
    return {k: v for k, v in converted.weights.items() if v is not None}, meta


def _convertible(
    weights: Mapping[str, torch.Tensor],
    network_prefix: str,
    metadata: Mapping[str, str] | None,
    hunyuan_layout: bool,
) -> Converted:
    """:func:`to_tuner`, refusing a file with tensors it cannot place (a converter must not drop any)."""
    converted = to_tuner(weights, network_prefix, metadata=metadata, hunyuan_layout=hunyuan_layout)
    if converted.unused:
        raise ConversionError(
            f"{len(converted.unused)} tensors are no LoRA layer tuner can convert (LyCORIS LoHa / LoKr and "
            f"DoRA tensors are not converted): {_listing(converted.unused)}"
        )
    return converted


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
