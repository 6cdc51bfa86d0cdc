"""Caption -> the three tensors FramePack conditions on, exactly as the reference computes them.

- LLaMA: the caption in the video chat template, padded to 256 + crop tokens (truncating longer captions),
  hidden state ``[-3]`` (output of the third-last layer, no final norm), template tokens and padding removed,
  then zero-padded (or cropped) to 512 rows with a bool mask.
- CLIP-L: the raw caption padded to 77 tokens, ``pooler_output``.

Both run under autocast in the LLaMA encoder's dtype when that is a half type, as in the reference.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from transformers import CLIPTextModel, LlamaModel

from tuner_core import ModelLoadError
from tuner_framepack.encoders.prompt_template import format_prompt, template_prefix

#: Caption tokens the LLaMA encoder sees at most (after the template).
LLAMA_MAX_CAPTION_TOKENS = 256
#: Rows of the cached LLaMA embedding (zero-padded, with a mask).
LLAMA_VEC_LENGTH = 512
#: Which hidden state is used: the third from the end, i.e. the last two layers are skipped.
LLAMA_HIDDEN_STATE = -3
CLIP_MAX_LENGTH = 77


@dataclass(frozen=True)
class PromptEmbeddings:
    """What the text cache stores for one caption.

    - ``llama_vec``: (512, hidden) in the LLaMA encoder's compute dtype (float16 for the real model, hidden
      4096); rows past the caption are zeros.
    - ``llama_attention_mask``: (512,) bool, True for caption rows.
    - ``clip_l_pooler``: (hidden_clip,) in the CLIP encoder's dtype (768 for CLIP-L).
    """

    llama_vec: torch.Tensor
    llama_attention_mask: torch.Tensor
    clip_l_pooler: torch.Tensor


def crop_or_pad_with_mask(vec: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, C) -> ((length, C), (length,) bool): zero-pad or crop rows; the mask marks the kept real rows."""
    rows = min(vec.shape[0], length)
    out = vec.new_zeros((length, vec.shape[1]))
    out[:rows] = vec[:rows]
    mask = torch.zeros(length, dtype=torch.bool, device=vec.device)
    mask[:rows] = True
    return out, mask


def _compute_dtype(text_encoder: torch.nn.Module) -> torch.dtype:
    # The embedding table keeps the compute dtype even when --fp8_llm stores the Linear weights in float8.
    return text_encoder.get_input_embeddings().weight.dtype


def _autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    if dtype in (torch.float16, torch.bfloat16) and torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


@torch.no_grad()
def encode_llama(
    caption: str,
    tokenizer: Any,
    text_encoder: LlamaModel,
    *,
    system_prompt: str | None = None,
    max_caption_tokens: int = LLAMA_MAX_CAPTION_TOKENS,
) -> torch.Tensor:
    """Hidden state ``[-3]`` of the caption's tokens only: (n_tokens <= max_caption_tokens, hidden)."""
    prefix = list(tokenizer(template_prefix(system_prompt))["input_ids"])
    crop = len(prefix)  # what template_crop() measures
    inputs = tokenizer(
        format_prompt(caption, system_prompt),
        padding="max_length",
        max_length=max_caption_tokens + crop,
        truncation=True,
        return_tensors="pt",
        return_attention_mask=True,
    )
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    if ids[0][mask[0].bool()][:crop].tolist() != prefix:
        # A tokenizer that merges the template's last token with the caption would make the crop wrong.
        raise ModelLoadError(
            "the LLaMA tokenizer does not keep the prompt template's header as a separate prefix; "
            "use the tokenizer of hunyuanvideo-community/HunyuanVideo."
        )
    embed = text_encoder.get_input_embeddings()
    if int(ids.max()) >= embed.num_embeddings:
        raise ModelLoadError(
            f"the LLaMA tokenizer produced token id {int(ids.max())} but the text encoder has only "
            f"{embed.num_embeddings} embeddings: tokenizer and --text_encoder1 belong to different models."
        )
    device = embed.weight.device
    dtype = _compute_dtype(text_encoder)
    with _autocast(device, dtype):
        out = text_encoder(
            input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True
        )
    states = out.hidden_states
    if len(states) != text_encoder.config.num_hidden_layers + 1:
        raise ModelLoadError(f"expected one hidden state per layer plus the embeddings, got {len(states)}.")
    valid = mask[0].to(device=device, dtype=torch.bool)
    return states[LLAMA_HIDDEN_STATE][0][valid][crop:].to(dtype)


@torch.no_grad()
def encode_clip_l(caption: str, tokenizer: Any, text_encoder: CLIPTextModel) -> torch.Tensor:
    """CLIP-L ``pooler_output`` of the raw caption at length 77: (hidden_clip,)."""
    if text_encoder.config.max_position_embeddings < CLIP_MAX_LENGTH:
        raise ModelLoadError(
            f"the CLIP text encoder has {text_encoder.config.max_position_embeddings} positions; "
            f"FramePack needs {CLIP_MAX_LENGTH}."
        )
    ids = tokenizer(
        caption, padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True, return_tensors="pt"
    )["input_ids"]
    embed = text_encoder.get_input_embeddings()
    if int(ids.max()) >= embed.num_embeddings:
        raise ModelLoadError(
            f"the CLIP tokenizer produced token id {int(ids.max())} but the text encoder has only "
            f"{embed.num_embeddings} embeddings: tokenizer and --text_encoder2 belong to different models."
        )
    pooled = text_encoder(input_ids=ids.to(embed.weight.device)).pooler_output[0]
    return pooled.to(embed.weight.dtype)


def encode_prompt(
    caption: str,
    *,
    tokenizer1: Any,
    text_encoder1: LlamaModel,
    tokenizer2: Any,
    text_encoder2: CLIPTextModel,
    custom_system_prompt: str | None = None,
) -> PromptEmbeddings:
    """Encode one caption into the tensors of its text cache (see :class:`PromptEmbeddings`)."""
    llama = encode_llama(caption, tokenizer1, text_encoder1, system_prompt=custom_system_prompt)
    llama_vec, llama_mask = crop_or_pad_with_mask(llama, LLAMA_VEC_LENGTH)
    clip_device = text_encoder2.get_input_embeddings().weight.device
    with _autocast(clip_device, _compute_dtype(text_encoder1)):
        pooler = encode_clip_l(caption, tokenizer2, text_encoder2)
    return PromptEmbeddings(llama_vec=llama_vec, llama_attention_mask=llama_mask, clip_l_pooler=pooler)
