"""Image encoder: SigLIP so400m-patch14-384 (Flux Redux's) as a transformers ``SiglipVisionModel``.

Sources: Comfy's ``sigclip_vision_patch14_384.safetensors``, ``image_encoder/model.safetensors`` of
lllyasviel/flux_redux_bfl, or that snapshot directory. Both files use the Hugging Face names
(``vision_model.encoder.layers.N...``); a ``SiglipVisionModel`` saved by transformers 5 drops the
``vision_model.`` prefix, which loads the same. A full SigLIP checkpoint's text tower is dropped.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import SiglipVisionConfig, SiglipVisionModel

from tuner_core import DataError, ModelLoadError
from tuner_core.weights import Transform
from tuner_framepack.encoders.identify import SIGLIP_VISION
from tuner_framepack.encoders.tower import TowerSpec, load_tower

try:  # transformers 5 names the PIL-based processor explicitly; 4.x only has this one
    from transformers import SiglipImageProcessorPil as _SiglipProcessor
except ImportError:  # pragma: no cover - depends on the installed transformers
    from transformers import SiglipImageProcessor as _SiglipProcessor

IMAGE_ENCODER_SUBFOLDER = "image_encoder"
SIGLIP_PATTERNS = ("model.safetensors", "model.safetensors.index.json", "model-00001-of-*.safetensors")
#: Flux Redux's image encoder config; the values shapes cannot tell come from here.
REAL_SIGLIP_CONFIG: dict[str, Any] = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 384,
    "patch_size": 14,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}
_HEAD_DIM = 72  # 1152 / 16 in the real model
_PREFIX = "vision_model."
_FOREIGN = re.compile(r"(^|\.)(text_model\.|logit_scale$|logit_bias$)|position_ids$")


def siglip_file_name(name: str) -> str | None:
    """File name -> canonical name (without ``vision_model.``), or ``None`` for tensors the tower lacks."""
    return TOWER.file_name(name)


def siglip_config_from_shapes(shapes: dict[str, tuple[int, ...]], where: str) -> SiglipVisionConfig:
    """A ``SiglipVisionConfig`` read off the tensor shapes (72-wide heads, tanh-GELU, as so400m has)."""
    layers = {int(m[1]) for n in shapes if (m := re.match(r"encoder\.layers\.(\d+)\.", n))}
    try:
        hidden, channels, patch, _ = shapes["embeddings.patch_embedding.weight"]
        positions = shapes["embeddings.position_embedding.weight"][0]
        intermediate = shapes["encoder.layers.0.mlp.fc1.weight"][0]
    except KeyError as exc:
        raise ModelLoadError(
            f"{where}: the SigLIP tensor {exc.args[0]!r} is missing, so its configuration "
            "cannot be read from the file."
        ) from None
    side = math.isqrt(positions)
    if side * side != positions or hidden % _HEAD_DIM:
        raise ModelLoadError(
            f"{where}: {positions} positions / width {hidden} do not fit a square patch grid "
            f"with {_HEAD_DIM}-wide heads; put the model's config.json beside the weights."
        )
    return SiglipVisionConfig(
        **{
            **REAL_SIGLIP_CONFIG,
            "hidden_size": hidden,
            "num_channels": channels,
            "patch_size": patch,
            "image_size": side * patch,
            "intermediate_size": intermediate,
            "num_hidden_layers": len(layers),
            "num_attention_heads": hidden // _HEAD_DIM,
            "vision_use_head": any(n.startswith("head.") for n in shapes),
        }
    )


TOWER = TowerSpec(
    kind=SIGLIP_VISION,
    subfolder=IMAGE_ENCODER_SUBFOLDER,
    patterns=SIGLIP_PATTERNS,
    model_types=("siglip_vision_model",),
    nested="vision_config",
    prefix=_PREFIX,
    foreign=_FOREIGN,
    config_class=SiglipVisionConfig,
    model_class=SiglipVisionModel,
    config_from_shapes=siglip_config_from_shapes,
)


def load_image_encoder(
    path: Path,
    *,
    dtype: torch.dtype = torch.float16,
    device: torch.device | str = "cpu",
    option: str = "--image_encoder",
    transform: Transform | None = None,
) -> SiglipVisionModel:
    """Load the SigLIP image encoder from the Comfy file, the flux_redux_bfl file, or its snapshot."""
    return load_tower(TOWER, path, dtype=dtype, device=device, option=option, transform=transform)


def siglip_processor(image_encoder: SiglipVisionModel) -> _SiglipProcessor:
    """The reference's preprocessing: squash-resize to the model's square size with PIL bicubic, rescale
    by 1/255, normalise with mean = std = 0.5 (no crop)."""
    size = image_encoder.config.image_size
    return _SiglipProcessor(
        do_resize=True,
        size={"height": size, "width": size},
        resample=3,  # PIL.Image.BICUBIC
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


@torch.no_grad()
def encode_image(
    image: np.ndarray, image_encoder: SiglipVisionModel, processor: _SiglipProcessor | None = None
) -> torch.Tensor:
    """A bucket-resized uint8 RGB frame (H, W, 3) -> ``last_hidden_state`` (1, tokens, hidden).

    For the real model that is (1, 729, 1152), in the encoder's dtype.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(
            f"the image encoder takes a uint8 RGB frame of shape (H, W, 3), got {image.dtype} {image.shape}."
        )
    processor = processor or siglip_processor(image_encoder)
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    param = next(image_encoder.parameters())
    pixels = pixels.to(device=param.device, dtype=param.dtype)
    return image_encoder(pixel_values=pixels).last_hidden_state
