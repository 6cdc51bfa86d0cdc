"""Tiny random-weight FramePack encoders (VAE, LLaMA, CLIP-L, SigLIP) saved in every real on-disk format.

Layout under the target directory, mirroring the downloads the guide lists::

    hunyuanvideo-community/               snapshot: vae/, text_encoder/ (4 shards), text_encoder_2/,
                                          tokenizer/, tokenizer_2/, each model folder with config.json
    comfy/llava_llama3_fp16.safetensors   Comfy single files (HF names; LLaMA's prefixed "model.", + lm_head)
    comfy/clip_l.safetensors
    comfy/sigclip_vision_patch14_384.safetensors
    tencent/vae/pytorch_model.pt          original VAE: {"state_dict": {"vae.<name>": tensor}} + its config.json
    flux_redux_bfl/image_encoder/         model.safetensors + config.json
    transformers5/text_encoder_2/         CLIP-L and SigLIP as transformers 5's save_pretrained writes them:
    transformers5/image_encoder/          model.safetensors + config.json, names without the tower prefix
    transformers5/clip_l.safetensors      the same two files alone (no config.json: shapes decide)
    transformers5/sigclip_vision_patch14_384.safetensors

The CLIP-L and SigLIP files under comfy/, hunyuanvideo-community/ and flux_redux_bfl/ name their tensors
``text_model.<name>`` / ``vision_model.<name>`` as every published file does (and transformers 4.x saves);
those under transformers5/ name them ``<name>``. Every format holds the same float16 values, so a loader
must give identical outputs whatever it reads.
The shapes the loaders cannot read off tensors (group-norm groups, head sizes) keep the real values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers import AutoencoderKLHunyuanVideo
from transformers import (
    AutoTokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    LlamaConfig,
    LlamaModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from tuner_core.weights import atomic_write, save_json, save_safetensors, save_sharded_safetensors
from tuner_framepack.dit import DiTConfig
from tuner_framepack.encoders.clip_text import REAL_CLIP_CONFIG
from tuner_framepack.encoders.llama import real_llama_config
from tuner_framepack.encoders.siglip import REAL_SIGLIP_CONFIG
from tuner_framepack.testing.tiny_dit import tiny_dit_config
from tuner_framepack.testing.tiny_tokenizers import build_tiny_clip_tokenizer, build_tiny_llama_tokenizer

#: Tiny VAE: four 32-channel levels (32 = the real GroupNorm group count), 16 latent channels like the real.
TINY_VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": (32, 32, 32, 32),
    "layers_per_block": 1,
    "latent_channels": 16,
    "norm_num_groups": 32,
}
#: Tiny LLaMA: 4 layers (hidden state [-3] is layer 2), two 128-wide query heads sharing one KV head.
TINY_LLAMA_SHAPE: dict[str, Any] = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "intermediate_size": 512,
}
#: Tiny CLIP: two 64-wide heads, 77 positions like CLIP-L.
TINY_CLIP_SHAPE: dict[str, Any] = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2}
#: Tiny SigLIP: two 72-wide heads, 56 px input (a 4x4 grid of 14 px patches).
TINY_SIGLIP_SHAPE: dict[str, Any] = {
    "hidden_size": 144,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 56,
}
SNAPSHOT = "hunyuanvideo-community"
#: Where the towers are written as transformers 5 saves them (no ``text_model.`` / ``vision_model.``).
UNPREFIXED = "transformers5"
STORED_DTYPE = torch.float16

ModelT = TypeVar("ModelT", bound=torch.nn.Module)


@dataclass(frozen=True)
class TinyVaeFiles:
    """The tiny VAE as the diffusers file, Tencent's original ``.pt``, and a snapshot directory."""

    diffusers_file: Path
    original_pt: Path
    snapshot: Path


@dataclass(frozen=True)
class TinyTextEncoder1Files:
    """The tiny LLaMA as Comfy's single file, the first of four diffusers shards, and a snapshot."""

    comfy_file: Path
    first_shard: Path
    snapshot: Path
    tokenizer_dir: Path


@dataclass(frozen=True)
class TinyTextEncoder2Files:
    """The tiny CLIP-L text encoder as Comfy's file, the diffusers file, and a snapshot (all prefixed
    ``text_model.``), and unprefixed as transformers 5 saves it: a lone file and a save_pretrained folder."""

    comfy_file: Path
    diffusers_file: Path
    snapshot: Path
    tokenizer_dir: Path
    unprefixed_file: Path
    unprefixed_snapshot: Path


@dataclass(frozen=True)
class TinyImageEncoderFiles:
    """The tiny SigLIP as Comfy's file, flux_redux_bfl's ``image_encoder/model.safetensors``, a snapshot (all
    prefixed ``vision_model.``), and unprefixed: a lone file and a transformers 5 save_pretrained folder."""

    comfy_file: Path
    redux_file: Path
    snapshot: Path
    unprefixed_file: Path
    unprefixed_snapshot: Path


@dataclass(frozen=True)
class TinyEncoderKit:
    """All four tiny encoders, written under one directory."""

    vae: TinyVaeFiles
    text_encoder1: TinyTextEncoder1Files
    text_encoder2: TinyTextEncoder2Files
    image_encoder: TinyImageEncoderFiles


# -- helpers ---------------------------------------------------------------------------------------------
def _seeded(seed: int, build: Callable[[], ModelT]) -> ModelT:
    """Build a model from a private RNG stream so callers' random state is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def _stored(model: torch.nn.Module, strip: str = "") -> dict[str, torch.Tensor]:
    """Model tensors in the stored dtype, named as on disk (``strip`` removed, re-added by callers)."""
    return {
        name.removeprefix(strip): t.detach().to(STORED_DTYPE) if t.is_floating_point() else t.detach()
        for name, t in model.state_dict().items()
    }


def _tower_tensors(model: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """A tower's stored tensors without ``prefix`` (whether the installed transformers uses it or not) and
    without the position ids buffer, which no file needs."""
    return {k: v for k, v in _stored(model, strip=prefix).items() if not k.endswith("position_ids")}


def _save_unprefixed(
    tensors: dict[str, torch.Tensor], config: dict[str, Any], folder: Path, single: Path
) -> tuple[Path, Path]:
    """Write a tower as transformers 5 does (``folder``: model.safetensors + config.json) and as a lone
    renamed file; returns (single file, folder)."""
    save_json(config, folder / "config.json")
    save_safetensors(tensors, folder / "model.safetensors")
    return save_safetensors(tensors, single), folder


# -- VAE ---------------------------------------------------------------------------------------------------
def build_tiny_vae(seed: int = 0) -> AutoencoderKLHunyuanVideo:
    """A random-weight HunyuanVideo VAE at tiny width (float32)."""
    return _seeded(seed, lambda: AutoencoderKLHunyuanVideo(**TINY_VAE_CONFIG))


def save_tiny_vae(target_dir: Path, seed: int = 0) -> TinyVaeFiles:
    """Write the tiny VAE in the diffusers, original-``.pt`` and snapshot layouts under ``target_dir``."""
    target_dir = Path(target_dir)
    vae = build_tiny_vae(seed)
    tensors = _stored(vae)
    folder = target_dir / SNAPSHOT / "vae"
    save_json({"_class_name": "AutoencoderKLHunyuanVideo", **dict(vae.config)}, folder / "config.json")
    diffusers_file = save_safetensors(tensors, folder / "diffusion_pytorch_model.safetensors")
    original = target_dir / "tencent" / "vae" / "pytorch_model.pt"
    with atomic_write(original) as temp:
        torch.save({"state_dict": {f"vae.{k}": v for k, v in tensors.items()}}, temp)
    # Tencent's folder has a config of its own class; loaders must not mistake it for a diffusers config.
    save_json({"_class_name": "AutoencoderKLCausal3D", "sample_size": 256}, original.parent / "config.json")
    return TinyVaeFiles(diffusers_file=diffusers_file, original_pt=original, snapshot=target_dir / SNAPSHOT)


# -- LLaMA -------------------------------------------------------------------------------------------------
def tiny_llama_config(vocab_size: int) -> LlamaConfig:
    """The real LLaMA config with tiny widths and depth."""
    return real_llama_config(**TINY_LLAMA_SHAPE, vocab_size=vocab_size)


def save_tiny_text_encoder1(target_dir: Path, seed: int = 1) -> TinyTextEncoder1Files:
    """Write the tiny LLaMA (Comfy file, 4 shards + index + config, snapshot) and its tokenizer."""
    target_dir = Path(target_dir)
    snapshot = target_dir / SNAPSHOT
    tokenizer_dir = build_tiny_llama_tokenizer(snapshot / "tokenizer")
    # Like the real model, the embedding table is a little larger than the tokenizer's vocabulary.
    vocab = len(AutoTokenizer.from_pretrained(str(tokenizer_dir))) + 11
    config = tiny_llama_config(vocab)
    model = _seeded(seed, lambda: LlamaModel(config))
    tensors = _stored(model)

    folder = snapshot / "text_encoder"
    shards, _index = save_sharded_safetensors(tensors, folder, num_shards=4, stem="model")
    save_json({**config.to_dict(), "architectures": ["LlamaModel"]}, folder / "config.json")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 100)
        lm_head = torch.randn(vocab, config.hidden_size).to(STORED_DTYPE)
    comfy = {f"model.{k}": v for k, v in tensors.items()} | {"lm_head.weight": lm_head}
    comfy_file = save_safetensors(comfy, target_dir / "comfy" / "llava_llama3_fp16.safetensors")
    return TinyTextEncoder1Files(
        comfy_file=comfy_file, first_shard=shards[0], snapshot=snapshot, tokenizer_dir=tokenizer_dir
    )


# -- CLIP-L ------------------------------------------------------------------------------------------------
def tiny_clip_config(vocab_size: int) -> CLIPTextConfig:
    """CLIP-L's text config with tiny widths (64-wide heads, 77 positions)."""
    heads = TINY_CLIP_SHAPE["hidden_size"] // 64
    return CLIPTextConfig(
        **{
            **REAL_CLIP_CONFIG,
            **TINY_CLIP_SHAPE,
            "num_attention_heads": heads,
            "projection_dim": TINY_CLIP_SHAPE["hidden_size"],
            "vocab_size": vocab_size,
        }
    )


def save_tiny_text_encoder2(target_dir: Path, seed: int = 2) -> TinyTextEncoder2Files:
    """Write the tiny CLIP text encoder (Comfy file, diffusers file + config, snapshot) and its tokenizer."""
    target_dir = Path(target_dir)
    snapshot = target_dir / SNAPSHOT
    tokenizer_dir = build_tiny_clip_tokenizer(snapshot / "tokenizer_2")
    config = tiny_clip_config(len(AutoTokenizer.from_pretrained(str(tokenizer_dir))))
    model = _seeded(seed, lambda: CLIPTextModel(config))
    plain = _tower_tensors(model, "text_model.")
    # Published CLIP text files name their tensors "text_model.<name>".
    tensors = {f"text_model.{k}": v for k, v in plain.items()}
    config_json = {**config.to_dict(), "architectures": ["CLIPTextModel"]}
    folder = snapshot / "text_encoder_2"
    save_json(config_json, folder / "config.json")
    diffusers_file = save_safetensors(tensors, folder / "model.safetensors")
    comfy_file = save_safetensors(tensors, target_dir / "comfy" / "clip_l.safetensors")
    unprefixed_file, unprefixed_snapshot = _save_unprefixed(
        plain,
        config_json,
        target_dir / UNPREFIXED / "text_encoder_2",
        target_dir / UNPREFIXED / "clip_l.safetensors",
    )
    return TinyTextEncoder2Files(
        comfy_file=comfy_file,
        diffusers_file=diffusers_file,
        snapshot=snapshot,
        tokenizer_dir=tokenizer_dir,
        unprefixed_file=unprefixed_file,
        unprefixed_snapshot=unprefixed_snapshot,
    )


# -- SigLIP ------------------------------------------------------------------------------------------------
def tiny_siglip_config() -> SiglipVisionConfig:
    """So400m's vision config with tiny widths and a 56 px input."""
    return SiglipVisionConfig(**{**REAL_SIGLIP_CONFIG, **TINY_SIGLIP_SHAPE})


def save_tiny_image_encoder(target_dir: Path, seed: int = 3) -> TinyImageEncoderFiles:
    """Write the tiny SigLIP (Comfy file, flux_redux_bfl file + config, snapshot) under ``target_dir``."""
    target_dir = Path(target_dir)
    config = tiny_siglip_config()
    model = _seeded(seed, lambda: SiglipVisionModel(config))
    plain = _tower_tensors(model, "vision_model.")
    tensors = {f"vision_model.{k}": v for k, v in plain.items()}
    config_json = {**config.to_dict(), "architectures": ["SiglipVisionModel"]}
    snapshot = target_dir / "flux_redux_bfl"
    folder = snapshot / "image_encoder"
    save_json(config_json, folder / "config.json")
    redux_file = save_safetensors(tensors, folder / "model.safetensors")
    comfy_name = "sigclip_vision_patch14_384.safetensors"
    comfy_file = save_safetensors(tensors, target_dir / "comfy" / comfy_name)
    unprefixed_file, unprefixed_snapshot = _save_unprefixed(
        plain, config_json, target_dir / UNPREFIXED / "image_encoder", target_dir / UNPREFIXED / comfy_name
    )
    return TinyImageEncoderFiles(
        comfy_file=comfy_file,
        redux_file=redux_file,
        snapshot=snapshot,
        unprefixed_file=unprefixed_file,
        unprefixed_snapshot=unprefixed_snapshot,
    )


def save_tiny_encoder_kit(target_dir: Path) -> TinyEncoderKit:
    """All four tiny encoders and both tokenizers under ``target_dir``."""
    return TinyEncoderKit(
        vae=save_tiny_vae(target_dir),
        text_encoder1=save_tiny_text_encoder1(target_dir),
        text_encoder2=save_tiny_text_encoder2(target_dir),
        image_encoder=save_tiny_image_encoder(target_dir),
    )


def kit_dit_config(**overrides: object) -> DiTConfig:
    """The tiny DiT's config with the widths of the tiny encoders' outputs (LLaMA, CLIP, SigLIP), so the
    kit's prompt and image embeddings feed it; ``overrides`` as in ``tiny_dit_config``."""
    widths = {
        "text_embed_dim": TINY_LLAMA_SHAPE["hidden_size"],
        "pooled_projection_dim": TINY_CLIP_SHAPE["hidden_size"],
        "image_proj_dim": TINY_SIGLIP_SHAPE["hidden_size"],
    }
    return tiny_dit_config(**{**widths, **overrides})
