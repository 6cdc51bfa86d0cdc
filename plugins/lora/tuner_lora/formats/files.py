"""``tuner convert-lora``'s conversion: a LoRA file's tensors rewritten in another layout, metadata kept.

Targets, named as the reference's ``convert_lora.py --target`` names them, plus plainer aliases:

- ``default`` (``tuner``, ``kohya``): tuner / kohya / musubi-tuner names, from any layout tuner reads;
- ``other`` (``comfy``): ``diffusion_model.<module path>.lora_A/lora_B.weight`` with ``.alpha`` tensors,
  what ComfyUI reads;
- ``diffusers``: ``transformer.<module path>.lora_A/lora_B.weight`` with alpha in diffusers'
  ``lora_adapter_metadata``, what diffusers' ``load_lora_weights`` / ``load_lora_adapter`` read.

Tensors are never recomputed, so converting there and back gives the same bytes. Unlike the reference, alpha
is not folded into the weights (which would lose it and change every tensor).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from tuner_lora.formats.convert import to_diffusers, tuner_file

#: ``--target`` values: (layout, default prefix, alpha as tensors).
TARGETS = {
    "default": ("tuner", "", True),
    "tuner": ("tuner", "", True),
    "kohya": ("tuner", "", True),
    "other": ("comfy", "diffusion_model", True),
    "comfy": ("comfy", "diffusion_model", True),
    "diffusers": ("diffusers", "transformer", False),
}


def convert_weights(
    weights: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    target: str,
    *,
    module_paths: Iterable[str],
    network_prefix: str,
    diffusers_prefix: str | None = None,
    hunyuan_layout: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    """``weights`` in the ``target`` layout: ``(tensors, metadata, the prefix used)``.

    :param module_paths: the model's layers (only needed for the diffusers / ComfyUI targets).
    :param diffusers_prefix: the component prefix of those targets without its dot (default per target).
    :param hunyuan_layout: map HunyuanVideo-layout names onto FramePack's layers (see ``to_tuner``).
    :raises ConversionError: when a tensor would be lost.
    """
    layout, default_prefix, alpha_tensors = TARGETS[target]
    if layout == "tuner":
        tensors, meta = tuner_file(weights, network_prefix, metadata, hunyuan_layout)
        return tensors, meta, f"{network_prefix}_"
    prefix = (diffusers_prefix if diffusers_prefix is not None else default_prefix).rstrip(".")
    prefix = f"{prefix}." if prefix else ""
    tensors, meta = to_diffusers(
        weights,
        module_paths,
        network_prefix,
        diffusers_prefix=prefix,
        alpha_tensors=alpha_tensors,
        metadata=metadata,
        hunyuan_layout=hunyuan_layout,
    )
    return tensors, meta, prefix
