"""LoRAs for the original HunyuanVideo layout (``double_blocks.N`` / ``single_blocks.N``) on FramePack's DiT.

FramePack's packed DiT is HunyuanVideo in diffusers' layout: the original model's fused projections are
separate layers there. A LoRA trained on the original layout (musubi-tuner's HunyuanVideo LoRAs, ComfyUI and
diffusion-pipe files) is mapped layer by layer, as diffusers' ``_convert_hunyuan_video_lora_to_diffusers``
and the reference tool's ``convert_hunyuan_to_framepack`` do:

- ``img_attn_qkv`` / ``txt_attn_qkv`` (fused q, k, v) go to ``attn.to_q/to_k/to_v`` and
  ``attn.add_q_proj/add_k_proj/add_v_proj``: each target gets the shared ``lora_down`` and its third of the
  ``lora_up`` rows, so ``up_i @ down`` is exactly the target's rows of the fused update;
- a single block's ``linear1`` (fused q, k, v and MLP input) goes to ``attn.to_q/to_k/to_v`` and
  ``proj_mlp``, split ``hidden, hidden, hidden, rest`` (hidden is the layer's input width);
- the final layer's modulation is stored (shift, scale) in HunyuanVideo and (scale, shift) in FramePack:
  its ``lora_up`` halves swap.

Names in the kohya spelling (``lora_unet_double_blocks_0_img_attn_qkv``) are looked up in a table built from
the original model's module paths, never by turning underscores into dots.
"""

from __future__ import annotations

import re

import attrs
import torch

#: Top-level module names of the original HunyuanVideo DiT (how a name in its layout starts).
ROOTS = (
    "double_blocks",
    "single_blocks",
    "img_in",
    "txt_in",
    "time_in",
    "vector_in",
    "guidance_in",
    "final_layer",
)

#: ``double_blocks.N.<key>`` -> the FramePack paths under ``transformer_blocks.N.`` (several: a fused layer).
DOUBLE_BLOCK = {
    "img_mod.linear": ("norm1.linear",),
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn_proj": ("attn.to_out.0",),
    "img_mlp.fc1": ("ff.net.0.proj",),
    "img_mlp.fc2": ("ff.net.2",),
    "txt_mod.linear": ("norm1_context.linear",),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn_proj": ("attn.to_add_out",),
    "txt_mlp.fc1": ("ff_context.net.0.proj",),
    "txt_mlp.fc2": ("ff_context.net.2",),
}
#: ``single_blocks.N.<key>`` -> the FramePack paths under ``single_transformer_blocks.N.``.
SINGLE_BLOCK = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.linear": ("norm.linear",),
}
#: ``txt_in.individual_token_refiner.blocks.N.<key>`` -> paths under ``context_embedder.token_refiner.refiner_blocks.N.``.
REFINER_BLOCK = {
    "self_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "self_attn_proj": ("attn.to_out.0",),
    "mlp.fc1": ("ff.net.0.proj",),
    "mlp.fc2": ("ff.net.2",),
    "adaLN_modulation.1": ("norm_out.linear",),
}
#: Layers outside the repeated blocks.
TOP_LEVEL = {
    "img_in.proj": "x_embedder.proj",
    "time_in.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "time_in.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "guidance_in.mlp.0": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.mlp.2": "time_text_embed.guidance_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "txt_in.input_embedder": "context_embedder.proj_in",
    "txt_in.t_embedder.mlp.0": "context_embedder.time_text_embed.timestep_embedder.linear_1",
    "txt_in.t_embedder.mlp.2": "context_embedder.time_text_embed.timestep_embedder.linear_2",
    "txt_in.c_embedder.linear_1": "context_embedder.time_text_embed.text_embedder.linear_1",
    "txt_in.c_embedder.linear_2": "context_embedder.time_text_embed.text_embedder.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
}
#: Layers whose output halves are in the other order in FramePack.
SWAPPED_HALVES = frozenset({"final_layer.adaLN_modulation.1"})

BLOCKS = (
    ("double_blocks", "transformer_blocks", DOUBLE_BLOCK),
    ("single_blocks", "single_transformer_blocks", SINGLE_BLOCK),
    (
        "txt_in.individual_token_refiner.blocks",
        "context_embedder.token_refiner.refiner_blocks",
        REFINER_BLOCK,
    ),
)


@attrs.frozen
class Target:
    """Where one original HunyuanVideo layer goes: FramePack paths, and how its ``lora_up`` rows split."""

    paths: tuple[str, ...]
    #: the fused layer splits into equal parts (qkv) or ``hidden, hidden, hidden, rest`` (``linear1``)
    mlp_split: bool = False
    swap_halves: bool = False


def is_hunyuan_path(path: str) -> bool:
    """Whether a dotted module path is in the original HunyuanVideo layout."""
    return path.split(".", 1)[0] in ROOTS


def target(path: str) -> Target | None:
    """The FramePack layers of the original HunyuanVideo layer ``path`` (``None``: not a known layer)."""
    if path in TOP_LEVEL:
        return Target((TOP_LEVEL[path],), swap_halves=path in SWAPPED_HALVES)
    for source, destination, table in BLOCKS:
        match = re.fullmatch(re.escape(source) + r"\.(\d+)\.(.+)", path)
        if match and match.group(2) in table:
            index, key = match.groups()
            paths = tuple(f"{destination}.{index}.{p}" for p in table[key])
            return Target(paths, mlp_split=source == "single_blocks" and key == "linear1")
    return None


def kohya_path(body: str) -> str | None:
    """The original dotted path of a kohya-spelled name (``double_blocks_0_img_attn_qkv``, prefix removed)."""
    top = {k.replace(".", "_"): k for k in TOP_LEVEL}
    if body in top:
        return top[body]
    for source, _, table in BLOCKS:
        match = re.fullmatch(re.escape(source.replace(".", "_")) + r"_(\d+)_(.+)", body)
        if match is None:
            continue
        index, rest = match.groups()
        keys = {k.replace(".", "_"): k for k in table}
        if rest in keys:
            return f"{source}.{index}.{keys[rest]}"
    return None


def split_up(up: torch.Tensor | None, down: torch.Tensor, mapped: Target) -> list[torch.Tensor | None] | None:
    """``lora_up`` of each target path (all ``None`` for a names-only check, ``up`` is ``None``; ``None`` when
    the rows do not split as the layer does: not this model's layer)."""
    if up is None:
        return [None] * len(mapped.paths)
    if mapped.swap_halves:
        if up.shape[0] % 2:
            return None
        first, second = up.chunk(2, dim=0)
        return [torch.cat([second, first], dim=0)]
    if len(mapped.paths) == 1:
        return [up]
    if mapped.mlp_split:
        hidden = down.shape[1]
        sizes = [hidden, hidden, hidden, up.shape[0] - 3 * hidden]
    else:
        sizes = [up.shape[0] // len(mapped.paths)] * len(mapped.paths)
    if min(sizes) <= 0 or sum(sizes) != up.shape[0]:
        return None
    return [piece.clone() for piece in torch.split(up, sizes, dim=0)]


def applies_to(block_lists: tuple[str, ...]) -> bool:
    """Whether a model with these block lists is HunyuanVideo in diffusers' layout (FramePack's DiT), the
    layout the original-layout names map onto."""
    return tuple(block_lists) == ("transformer_blocks", "single_transformer_blocks")
