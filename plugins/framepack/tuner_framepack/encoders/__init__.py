"""FramePack's conditioning encoders and VAE: loaders for every published format, and the encoders' calls.

Loaders (each takes the path a user gives: a single file, the first of a shard set, or a snapshot folder;
``dtype`` defaults to the reference's float16; errors are :class:`tuner_core.ModelLoadError`):

- :func:`load_vae` -> diffusers ``AutoencoderKLHunyuanVideo`` (with the ``--vae_*`` memory options)
- :func:`load_text_encoder1` -> transformers ``LlamaModel`` (``fp8=True`` for ``--fp8_llm``)
- :func:`load_text_encoder2` -> transformers ``CLIPTextModel``
- :func:`load_image_encoder` -> transformers ``SiglipVisionModel``
- :func:`load_tokenizers` -> (LLaMA tokenizer, CLIP tokenizer), from ``--tokenizer1/2`` or beside the weights

Encoding:

- :func:`encode_prompt` -> :class:`PromptEmbeddings` (``llama_vec`` (512, hidden) in the LLaMA dtype,
  ``llama_attention_mask`` (512,) bool, ``clip_l_pooler`` (768,) for CLIP-L, in the CLIP dtype)
- :func:`encode_image` -> SigLIP ``last_hidden_state`` (1, 729, 1152 for the real model)
- :func:`vae_encode` / :func:`vae_decode` -> scaled latents / pixels
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuner_framepack.encoders.clip_text import load_text_encoder2
from tuner_framepack.encoders.identify import describe_layout, identify_models
from tuner_framepack.encoders.llama import load_text_encoder1
from tuner_framepack.encoders.prompt_template import DEFAULT_SYSTEM_PROMPT, format_prompt, template_crop
from tuner_framepack.encoders.siglip import encode_image, load_image_encoder, siglip_processor
from tuner_framepack.encoders.text_encoding import PromptEmbeddings, crop_or_pad_with_mask, encode_prompt
from tuner_framepack.encoders.tokenizer_files import load_tokenizer1, load_tokenizer2
from tuner_framepack.encoders.vae import VAE_SCALING_FACTOR, load_vae, vae_decode, vae_encode
from tuner_framepack.encoders.vae_memory import configure_vae_memory


def load_tokenizers(
    text_encoder1: Path,
    text_encoder2: Path,
    *,
    tokenizer1: Path | None = None,
    tokenizer2: Path | None = None,
    allow_download: bool = False,
    hub_cache_dir: Path | None = None,
) -> tuple[Any, Any]:
    """The LLaMA and CLIP tokenizers for the given encoder weights.

    ``tokenizer1``/``tokenizer2`` are the ``--tokenizer1/--tokenizer2`` folders; without them the snapshot's
    ``tokenizer/`` and ``tokenizer_2/`` beside the weights are used, then the local hub cache of
    hunyuanvideo-community/HunyuanVideo (downloads only with ``allow_download``).
    """
    return (
        load_tokenizer1(
            tokenizer1, text_encoder1, allow_download=allow_download, hub_cache_dir=hub_cache_dir
        ),
        load_tokenizer2(
            tokenizer2, text_encoder2, allow_download=allow_download, hub_cache_dir=hub_cache_dir
        ),
    )


__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "VAE_SCALING_FACTOR",
    "PromptEmbeddings",
    "configure_vae_memory",
    "crop_or_pad_with_mask",
    "describe_layout",
    "encode_image",
    "encode_prompt",
    "format_prompt",
    "identify_models",
    "load_image_encoder",
    "load_text_encoder1",
    "load_text_encoder2",
    "load_tokenizer1",
    "load_tokenizer2",
    "load_tokenizers",
    "load_vae",
    "siglip_processor",
    "template_crop",
    "vae_decode",
    "vae_encode",
]
