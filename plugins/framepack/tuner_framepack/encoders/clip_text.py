"""Text encoder 2: CLIP-L's text tower as a transformers ``CLIPTextModel``.

Sources: Comfy's ``clip_l.safetensors``, the diffusers ``text_encoder_2/model.safetensors``, or a snapshot
directory. Both files use the Hugging Face names (``text_model.embeddings...``); a ``CLIPTextModel`` saved
by transformers 5 drops the ``text_model.`` prefix, which loads the same. Comfy's may add the projection
and logit scale of the full CLIP, and a full CLIP checkpoint adds the vision tower: those are dropped.
Other CLIP files prefix the names (``cond_stage_model.transformer.``...): the prefix is stripped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPTextConfig, CLIPTextModel

from tuner_core import ModelLoadError
from tuner_core.weights import Transform
from tuner_framepack.encoders.identify import CLIP_TEXT
from tuner_framepack.encoders.tower import TowerSpec, load_tower

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
    return TOWER.file_name(name)


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


TOWER = TowerSpec(
    kind=CLIP_TEXT,
    subfolder=TEXT_ENCODER2_SUBFOLDER,
    patterns=CLIP_PATTERNS,
    model_types=("clip_text_model",),
    nested="text_config",
    prefix=_PREFIX,
    foreign=_FOREIGN,
    config_class=CLIPTextConfig,
    model_class=CLIPTextModel,
    config_from_shapes=clip_config_from_shapes,
)


def load_text_encoder2(
    path: Path,
    *,
    dtype: torch.dtype = torch.float16,
    device: torch.device | str = "cpu",
    option: str = "--text_encoder2",
    transform: Transform | None = None,
) -> CLIPTextModel:
    """Load the CLIP-L text encoder from a Comfy file, the diffusers file, or a snapshot directory."""
    return load_tower(TOWER, path, dtype=dtype, device=device, option=option, transform=transform)
