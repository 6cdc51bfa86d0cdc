"""LoRA file layouts: told apart by tensor names, converted to tuner's layout at load, and back for other tools.

Layouts read (one layer shown, ``transformer_blocks.0.attn.to_q`` of FramePack's DiT):

- tuner / kohya / musubi-tuner: ``lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight``,
  ``.lora_up.weight``, ``.alpha``;
- diffusers / PEFT: ``transformer.transformer_blocks.0.attn.to_q.lora_A.weight`` and ``.lora_B.weight``
  (also under ``base_model.model.``); alpha from ``.alpha``, the adapter config, or the rank;
- ComfyUI / diffusion-pipe: the same under ``diffusion_model.``;
- the original HunyuanVideo layout in either spelling (``lora_unet_double_blocks_0_img_attn_qkv``,
  ``diffusion_model.single_blocks.0.linear1``), split onto FramePack's separate layers
  (:mod:`tuner_lora.formats.hunyuan`).

Layouts written by ``tuner convert-lora``: tuner's, diffusers' (``transformer.``, alpha in the adapter config)
and ComfyUI's (``diffusion_model.``, alpha tensors).
"""

from tuner_lora.formats.adapter_config import METADATA_KEY
from tuner_lora.formats.convert import ConversionError, Converted, to_diffusers, to_tuner, tuner_file
from tuner_lora.formats.names import kohya_name, kohya_names, parse_key
from tuner_lora.formats.sniff import describe, is_lora, lora_layouts

__all__ = [
    "METADATA_KEY",
    "ConversionError",
    "Converted",
    "describe",
    "is_lora",
    "kohya_name",
    "kohya_names",
    "lora_layouts",
    "parse_key",
    "to_diffusers",
    "to_tuner",
    "tuner_file",
]
