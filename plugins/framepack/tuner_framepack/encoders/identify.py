"""Tell which model a weights file holds from its characteristic tensor names.

Used to turn "the wrong file was passed" (a CLIP file as ``--image_encoder``, a DiT as ``--vae``) into one
sentence that says what the file looks like and what was expected, instead of a list of missing keys.
"""

from __future__ import annotations

from collections.abc import Iterable

from tuner_core import ModelLoadError
from tuner_core.weights import TensorSource

HUNYUAN_VAE = "HunyuanVideo 3D VAE"
LLAMA = "LLaMA text encoder (LLaVA-LLaMA-3 text tower)"
CLIP_TEXT = "CLIP-L text encoder"
SIGLIP_VISION = "SigLIP vision encoder"
CLIP_VISION = "CLIP vision encoder"
FRAMEPACK_DIT = "FramePack packed DiT"
OTHER_DIT = "diffusion transformer (DiT) of another model"
T5 = "T5 text encoder"
IMAGE_VAE = "2D image VAE (Stable Diffusion / Flux style)"

# (family, kind, dotted name parts that must each occur in some tensor name). Only the first match per
# family counts, so a layout that extends another (FramePack's DiT adds clean_x_embedder to HunyuanVideo's,
# CLIP's vision tower adds a class embedding to SigLIP's) comes first. A file can hold several families: a
# full CLIP or SigLIP checkpoint has a text and a vision tower. The encoder towers are named without their
# ``vision_model.`` / ``text_model.`` prefix, which published files (Comfy, flux_redux_bfl) carry and files
# saved by transformers 5 do not, so both spellings match.
_SIGNATURES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("dit", FRAMEPACK_DIT, ("transformer_blocks.0", "clean_x_embedder")),
    ("dit", OTHER_DIT, ("single_transformer_blocks.0", "transformer_blocks.0")),
    ("dit", OTHER_DIT, ("double_blocks.0", "single_blocks.0")),
    ("vae", HUNYUAN_VAE, ("encoder.conv_in.conv.weight", "decoder.up_blocks")),
    ("vae", IMAGE_VAE, ("encoder.conv_in.weight", "decoder.up_blocks")),
    ("vision", CLIP_VISION, ("embeddings.class_embedding", "embeddings.patch_embedding.weight")),
    ("vision", SIGLIP_VISION, ("embeddings.patch_embedding.weight", "post_layernorm.weight")),
    ("text", CLIP_TEXT, ("embeddings.token_embedding.weight", "final_layer_norm.weight")),
    ("text", LLAMA, ("embed_tokens.weight", "layers.0.self_attn.q_proj.weight", "mlp.gate_proj")),
    ("text", T5, ("block.0.layer.0.SelfAttention.q.weight",)),
)


def _has_part(dotted: list[str], part: str) -> bool:
    """Whether some name (given as ``.name.``) holds ``part`` as whole dotted components:
    ``embeddings.patch_embedding.weight`` is in ``vision_model.embeddings.patch_embedding.weight`` but not in
    ``x_embeddings.patch_embedding.weight`` nor ``embeddings.patch_embedding.weight_scale``."""
    wrapped = f".{part}."
    return any(wrapped in name for name in dotted)


def identify_models(keys: Iterable[str]) -> list[str]:
    """The kinds of model whose tensors these names are (usually one; empty when the layout is unknown)."""
    dotted = [f".{k}." for k in keys]
    found: dict[str, str] = {}
    for family, kind, required in _SIGNATURES:
        if family not in found and all(_has_part(dotted, part) for part in required):
            found[family] = kind
    return list(found.values())


def describe_layout(keys: Iterable[str]) -> str:
    """A short phrase for error messages: the model kind, or the first few names when it is unknown."""
    names = list(keys)
    kinds = identify_models(names)
    if kinds:
        return "a " + " + ".join(kinds)
    if not names:
        return "an empty file"
    sample = ", ".join(repr(k) for k in names[:3])
    return f"an unrecognised layout ({len(names)} tensors, e.g. {sample})"


def require_model(source: TensorSource, expected: str, option: str) -> None:
    """Raise :class:`ModelLoadError` unless ``source`` holds the ``expected`` kind of model.

    ``option`` is the command-line option the file came from, so the message tells the user what to change.
    """
    names = list(source.infos())
    if expected in identify_models(names):
        return
    raise ModelLoadError(
        f"{option} {source.description}: expected {expected} weights, but the file looks like "
        f"{describe_layout(names)}. Pass the {expected} file to {option}."
    )
