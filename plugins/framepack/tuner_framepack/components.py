"""Loading FramePack's components for a command: the DiT, the VAE and the three conditioning encoders."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from tuner_core import ConfigError, GenerateOptions, TrainOptions
from tuner_core.weights import Transform
from tuner_framepack.options import (
    FramePackCacheLatentsOptions,
    FramePackCacheTextOptions,
    FramePackGenerateOptions,
    FramePackTrainOptions,
)

log = logging.getLogger(__name__)


@attrs.frozen
class TextEncoder:
    """A text encoder with the tokenizer that belongs to it."""

    tokenizer: Any
    model: Any


def encode_caption(models: Mapping[str, Any], caption: str, system_prompt: str | None = None) -> Any:
    """One caption through LLaMA and CLIP (``models["text_encoder1"]`` and ``["text_encoder2"]``): its
    ``PromptEmbeddings``, as the text caches store them and generation conditions on them."""
    from tuner_framepack.encoders import encode_prompt

    first, second = models["text_encoder1"], models["text_encoder2"]
    return encode_prompt(
        caption,
        tokenizer1=first.tokenizer,
        text_encoder1=first.model,
        tokenizer2=second.tokenizer,
        text_encoder2=second.model,
        custom_system_prompt=system_prompt,
    )


#: What each component is, for messages; each is loaded from the option of the same name.
COMPONENTS = {
    "dit": "the DiT",
    "vae": "the VAE",
    "image_encoder": "the SigLIP image encoder",
    "text_encoder1": "the LLaMA text encoder",
    "text_encoder2": "the CLIP text encoder",
}


def option_problems(command: str, components: tuple[str, ...], options: Any) -> list[str]:
    """Pre-flight of FramePack's options: every component ``command`` loads is given; nothing is asked
    for that this plugin cannot do yet."""
    problems = [
        f"--{name} is required: tuner {command} loads {COMPONENTS[name]} from it"
        for name in components
        if _path(options, name) is None
    ]
    if isinstance(options, (FramePackCacheLatentsOptions, FramePackTrainOptions)) and options.one_frame:
        problems.append("--one_frame is not available yet in tuner's FramePack plugin; leave it out")
    if (
        full_fine_tuning(options)
        and options.mixed_precision == "fp16"
        and dit_dtype(options) == torch.float16
    ):
        problems.append(
            "--dit_dtype float16 with --mixed_precision fp16 cannot train the whole DiT: the gradient "
            "scaler refuses float16 gradients; keep the default (float32) or give --dit_dtype bfloat16"
        )
    return problems


def _path(options: Any, name: str) -> Path | None:
    """The file of component ``name``: the option of the same name, when this command has it."""
    return attrs.asdict(options, recurse=False).get(name)


def _required(options: Any, name: str, what: str) -> Path:
    path = _path(options, name)
    if path is None:
        raise ConfigError(f"--{name} is required for {what}")
    return Path(path)


#: ``--dit_dtype`` values and the dtypes they name.
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

#: What the log line calls each component.
_SHORT_NAMES = {
    "dit": "DiT",
    "vae": "VAE",
    "image_encoder": "SigLIP",
    "text_encoder1": "LLaMA",
    "text_encoder2": "CLIP",
}


def fp8_blocks(options: Any) -> bool:
    """Whether the DiT's block weights are stored in fp8: ``--fp8_base`` (train) or ``--fp8`` (generate)."""
    if isinstance(options, TrainOptions):
        return options.fp8_base
    return isinstance(options, GenerateOptions) and options.fp8


def fp8_llm(options: Any) -> bool:
    """Whether ``--fp8_llm`` stores the LLaMA's Linear weights in fp8 (commands without the option: no)."""
    with_llama = (FramePackCacheTextOptions, FramePackTrainOptions, FramePackGenerateOptions)
    return isinstance(options, with_llama) and options.fp8_llm


def full_fine_tuning(options: Any) -> bool:
    """Whether ``options`` train the whole DiT (``tuner train`` without ``--network_module``)."""
    return isinstance(options, TrainOptions) and options.network_module is None


def dit_dtype(options: Any) -> torch.dtype:
    """The dtype the DiT's weights are held in: ``--dit_dtype``, else bfloat16 whatever
    ``--mixed_precision`` says (the reference fixes FramePack's DiT to bfloat16).

    Full fine-tuning keeps float32 unless ``--dit_dtype`` says otherwise: the optimizer then updates
    float32 weights, as the reference's full fine-tuning does without ``--full_bf16``.
    """
    if options.dit_dtype is not None:
        return DTYPES[options.dit_dtype]
    return torch.float32 if full_fine_tuning(options) else torch.bfloat16


def encoder_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the VAE, SigLIP, LLaMA and CLIP: float16 on a GPU, as the reference holds them all.

    On the CPU float32: float16 saves half the host memory there but computes no faster (measured on a
    CPU with AVX512-FP16) and much slower on CPUs without it, where it is converted op by op.
    """
    return torch.float16 if device.type == "cuda" else torch.float32


def component_dtypes(options: Any, device: torch.device) -> dict[str, torch.dtype]:
    """The dtype each component given to this command is held in on ``device``, by component name."""
    return {
        name: dit_dtype(options) if name == "dit" else encoder_dtype(device)
        for name in COMPONENTS
        if _path(options, name) is not None
    }


#: ``id()`` of the options objects whose dtypes were logged (each entry leaves with its object).
_told: set[int] = set()


def _tell_dtypes_once(options: Any, device: torch.device) -> None:
    """Log, once per command, one line with every given component's dtype."""
    if id(options) in _told:
        return
    _told.add(id(options))
    weakref.finalize(options, _told.discard, id(options))
    notes = {
        "dit": " (fp8 block weights)" if fp8_blocks(options) else "",
        "text_encoder1": " (fp8 weights)" if fp8_llm(options) else "",
    }
    parts = [
        f"{_SHORT_NAMES[name]} {str(dtype).removeprefix('torch.')}{notes.get(name, '')}"
        for name, dtype in component_dtypes(options, device).items()
    ]
    log.info("dtypes on %s: %s", device.type, ", ".join(parts))
    if full_fine_tuning(options) and dit_dtype(options) != torch.float32:
        log.warning(
            "full fine-tuning with --dit_dtype %s: the optimizer updates %s weights directly, and updates "
            "smaller than their resolution are lost (the reference keeps float32 for full fine-tuning)",
            options.dit_dtype,
            options.dit_dtype,
        )


def load_component(
    component: str, options: Any, device: torch.device, transform: Transform | None = None
) -> Any:
    """Load ``component`` with the command's options (see ``FramePackArchitecture.components``), each
    tensor rewritten by the memory strategies' ``transform`` while it streams in."""
    from tuner_framepack import encoders

    _tell_dtypes_once(options, device)
    if component == "dit":
        from tuner_framepack.dit import load_dit

        return load_dit(
            _required(options, "dit", "the DiT"),
            device=device,
            dtype=dit_dtype(options),
            attn_mode=options.attn_mode,  # load_dit accepts every alias
            split_attn=options.split_attn,
            transform=transform,
        )
    dtype = encoder_dtype(device)
    if component == "vae":
        return encoders.load_vae(
            _required(options, "vae", "the VAE"),
            dtype=dtype,
            device=device,
            chunk_size=options.vae_chunk_size,
            tiling=options.vae_tiling,
            tile_sample_min_size=options.vae_spatial_tile_sample_min_size,
            transform=transform,
        )
    if component == "image_encoder":
        return encoders.load_image_encoder(
            _required(options, "image_encoder", "SigLIP"), dtype=dtype, device=device, transform=transform
        )
    if component == "text_encoder1":
        path = _required(options, "text_encoder1", "the LLaMA text encoder")
        tokenizer = encoders.load_tokenizer1(options.tokenizer1, path)
        model = encoders.load_text_encoder1(
            path, dtype=dtype, device=device, fp8=options.fp8_llm, transform=transform
        )
        return TextEncoder(tokenizer, model)
    if component == "text_encoder2":
        path = _required(options, "text_encoder2", "the CLIP text encoder")
        tokenizer = encoders.load_tokenizer2(options.tokenizer2, path)
        text_encoder = encoders.load_text_encoder2(path, dtype=dtype, device=device, transform=transform)
        return TextEncoder(tokenizer, text_encoder)
    raise ConfigError(f"FramePack has no component {component!r}")
