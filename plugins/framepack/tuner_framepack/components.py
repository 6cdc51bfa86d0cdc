"""Loading FramePack's components for a command: the DiT, the VAE and the three conditioning encoders."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import attrs
import torch

from tuner_core import ConfigError, TrainOptions
from tuner_core.weights import Transform
from tuner_framepack.options import FramePackCacheLatentsOptions, FramePackTrainOptions

log = logging.getLogger(__name__)


@attrs.frozen
class TextEncoder:
    """A text encoder with the tokenizer that belongs to it."""

    tokenizer: Any
    model: Any


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
    return problems


def _path(options: Any, name: str) -> Path | None:
    """The file of component ``name``: the option of the same name, when this command has it."""
    return attrs.asdict(options, recurse=False).get(name)


def _required(options: Any, name: str, what: str) -> Path:
    path = _path(options, name)
    if path is None:
        raise ConfigError(f"--{name} is required for {what}")
    return Path(path)


def _encoder_dtype(device: torch.device) -> torch.dtype:
    # The reference runs every encoder in float16; CPUs compute float16 slowly and partly not at all.
    return torch.float16 if device.type == "cuda" else torch.float32


def dit_dtype(options: Any) -> torch.dtype | None:
    """bf16 / fp16 weights under that mixed precision (the reference trains the DiT in bf16); else fp32."""
    precision = options.mixed_precision if isinstance(options, TrainOptions) else "no"
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def load_component(
    component: str, options: Any, device: torch.device, transform: Transform | None = None
) -> Any:
    """Load ``component`` with the command's options (see ``FramePackArchitecture.components``), each
    tensor rewritten by the memory strategies' ``transform`` while it streams in."""
    from tuner_framepack import encoders

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
    dtype = _encoder_dtype(device)
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
