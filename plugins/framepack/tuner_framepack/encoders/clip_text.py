"""Text encoder 2: CLIP-L's text tower as a transformers ``CLIPTextModel``.

Sources: Comfy's ``clip_l.safetensors``, the diffusers ``text_encoder_2/model.safetensors``, or a snapshot
directory. Both files use the Hugging Face names (``text_model.embeddings...``); Comfy's may add the
projection and logit scale of the full CLIP, and a full CLIP checkpoint adds the vision tower: those are
dropped. Other CLIP files prefix the names (``cond_stage_model.transformer.``...): the prefix is stripped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPTextConfig, CLIPTextModel

from tuner_core import ModelLoadError
from tuner_framepack.encoders.identify import CLIP_TEXT, require_model
from tuner_framepack.encoders.locate import locate_weights, read_config
from tuner_framepack.encoders.streaming import build_empty, load_weights, open_weights, tensor_shapes

TEXT_ENCODER2_SUBFOLDER = "text_encoder_2"
CLIP_PATTERNS = ("model.safetensors", "model.safetensors.index.json", "model-00001-of-*.safetensors")
#: openai/clip-vit-large-patch14's text config; values shapes cannot tell come from here. The legacy
#: ``eos_token_id`` 2 makes the pooler read the position of the highest token id (the end token).
REAL_CLIP_CONFIG: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
_HEAD_DIM = 64  # 768 / 12 in the real model
_PREFIX = "text_model."
_FOREIGN = re.compile(
    r"(^|\.)(vision_model\.|visual_projection\.|text_projection\.|logit_scale$|logit_bias$)|position_ids$"
)


def clip_file_name(name: str) -> str | None:
    """File name -> canonical name (without ``text_model.``), or ``None`` for tensors the text tower lacks."""
    at = name.find(_PREFIX)
    if at > 0:  # "cond_stage_model.transformer.text_model.x" and the like
        name = name[at:]
    if _FOREIGN.search(name):
        return None
    return name[len(_PREFIX) :] if name.startswith(_PREFIX) else name


def clip_config_from_shapes(shapes: dict[str, tuple[int, ...]], where: str) -> CLIPTextConfig:
    """A ``CLIPTextConfig`` read off the tensor shapes (64-wide heads, quick-GELU, as in CLIP-L)."""
    layers = {int(m[1]) for n in shapes if (m := re.match(r"encoder\.layers\.(\d+)\.", n))}
    try:
        vocab, hidden = shapes["embeddings.token_embedding.weight"]
        positions = shapes["embeddings.position_embedding.weight"][0]
        intermediate = shapes["encoder.layers.0.mlp.fc1.weight"][0]
    except KeyError as exc:
        raise ModelLoadError(
            f"{where}: the CLIP tensor {exc.args[0]!r} is missing, so its configuration "
            "cannot be read from the file."
        ) from None
    if hidden % _HEAD_DIM:
        raise ModelLoadError(
            f"{where}: width {hidden} does not split into {_HEAD_DIM}-wide heads; "
            "put the model's config.json beside the weights."
        )
    return CLIPTextConfig(
        **{
            **REAL_CLIP_CONFIG,
            "vocab_size": vocab,
            "hidden_size": hidden,
            "projection_dim": hidden,
            "max_position_embeddings": positions,
            "intermediate_size": intermediate,
            "num_hidden_layers": len(layers),
            "num_attention_heads": hidden // _HEAD_DIM,
        }
    )


def load_text_encoder2(
    path: Path,
    *,
    dtype: torch.dtype = torch.float16,
    device: torch.device | str = "cpu",
    option: str = "--text_encoder2",
) -> CLIPTextModel:
    """Load the CLIP-L text encoder from a Comfy file, the diffusers file, or a snapshot directory."""
    location = locate_weights(
        Path(path), subfolder=TEXT_ENCODER2_SUBFOLDER, patterns=CLIP_PATTERNS, option=option
    )
    with open_weights(location) as source:
        require_model(source, CLIP_TEXT, option)
        config_dict = read_config(location, model_types=("clip_text_model",), nested="text_config")
        config = (
            CLIPTextConfig(**config_dict)
            if config_dict
            else clip_config_from_shapes(tensor_shapes(source, clip_file_name), source.description)
        )
        model = build_empty(lambda: CLIPTextModel(config))
        # The model's own names may or may not carry "text_model." depending on the transformers version.
        model_name = {n.removeprefix(_PREFIX): n for n in model.state_dict()}

        def rename(name: str) -> str | None:
            canonical = clip_file_name(name)
            return None if canonical is None else model_name.get(canonical, canonical)

        load_weights(model, source, rename, device=device, dtype=dtype, option=option)
    return model
