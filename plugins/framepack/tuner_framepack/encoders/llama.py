"""Text encoder 1: the LLaVA-LLaMA-3-8B text tower as a transformers ``LlamaModel``.

Sources: Comfy's single file ``llava_llama3_fp16.safetensors`` (names prefixed ``model.``, plus ``lm_head``),
the 4-shard diffusers set ``text_encoder/model-0000N-of-00004.safetensors``, or a snapshot directory.
The config comes from ``config.json`` when the weights sit in a diffusers folder, else from tensor shapes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaModel

from tuner_core import ModelLoadError, fp8_linear_transform, use_fp8_linears
from tuner_core.weights import Transform, chain_transforms
from tuner_framepack.encoders.identify import LLAMA, require_model
from tuner_framepack.encoders.locate import locate_weights, read_config
from tuner_framepack.encoders.streaming import build_empty, load_weights, open_weights, tensor_shapes

TEXT_ENCODER1_SUBFOLDER = "text_encoder"
LLAMA_PATTERNS = ("model.safetensors", "model.safetensors.index.json", "model-00001-of-*.safetensors")
#: The real model's configuration; the values tensor shapes cannot tell come from here.
REAL_LLAMA_CONFIG: dict[str, Any] = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 14336,
    "vocab_size": 128320,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 8192,
    "hidden_act": "silu",
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
}


def real_llama_config(**overrides: Any) -> LlamaConfig:
    """The real model's config with ``overrides``; special-token ids outside the vocabulary are dropped."""
    values = {**REAL_LLAMA_CONFIG, **overrides}
    for key in ("bos_token_id", "eos_token_id"):
        if values[key] is not None and values[key] >= values["vocab_size"]:
            values[key] = None  # only tiny test models hit this; LlamaModel does not use them
    return LlamaConfig(**values)


def portable_llama_config(values: dict[str, Any]) -> dict[str, Any]:
    """A LLaMA ``config.json`` written by either transformers major version, as the installed one reads it.

    transformers 5 writes the RoPE base and scaling inside ``rope_parameters`` and no ``rope_theta``; 4.x
    reads only ``rope_theta`` / ``rope_scaling`` and would silently use a base of 10000, so both are filled
    in from it (5.x reads either spelling).
    """
    rope = values.get("rope_parameters")
    if not isinstance(rope, dict):
        return values
    values = dict(values)
    if values.get("rope_theta") is None and rope.get("rope_theta") is not None:
        values["rope_theta"] = rope["rope_theta"]
    if values.get("rope_scaling") is None and rope.get("rope_type", "default") != "default":
        values["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    return values


def llama_tensor_name(name: str) -> str | None:
    """File name -> ``LlamaModel`` name: strip Comfy's ``model.``; drop the LM head and tokenizer blobs."""
    if name == "lm_head.weight" or name == "tokenizer" or name.startswith("tokenizer."):
        return None
    return name[len("model.") :] if name.startswith("model.") else name


def llama_config_from_shapes(shapes: dict[str, tuple[int, ...]], where: str) -> LlamaConfig:
    """A ``LlamaConfig`` for these tensor shapes (by model name); head size, RoPE base and epsilons are
    the real model's.

    Raises :class:`ModelLoadError` when the projections do not divide into heads of the assumed size.
    """
    layers = {int(m[1]) for n in shapes if (m := re.match(r"layers\.(\d+)\.", n))}
    head_dim = REAL_LLAMA_CONFIG["head_dim"]
    try:
        vocab, hidden = shapes["embed_tokens.weight"]
        q_out = shapes["layers.0.self_attn.q_proj.weight"][0]
        kv_out = shapes["layers.0.self_attn.k_proj.weight"][0]
        intermediate = shapes["layers.0.mlp.gate_proj.weight"][0]
    except KeyError as exc:
        raise ModelLoadError(
            f"{where}: the LLaMA tensor {exc.args[0]!r} is missing, so its configuration "
            "cannot be read from the file."
        ) from None
    if q_out % head_dim or kv_out % head_dim:
        raise ModelLoadError(
            f"{where}: attention projections of {q_out}/{kv_out} rows do not split into "
            f"{head_dim}-wide heads; put the model's config.json beside the weights."
        )
    return real_llama_config(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=len(layers),
        num_attention_heads=q_out // head_dim,
        num_key_value_heads=kv_out // head_dim,
        intermediate_size=intermediate,
        attention_bias="layers.0.self_attn.q_proj.bias" in shapes,
        mlp_bias="layers.0.mlp.gate_proj.bias" in shapes,
    )


def load_text_encoder1(
    path: Path,
    *,
    dtype: torch.dtype = torch.float16,
    device: torch.device | str = "cpu",
    fp8: bool = False,
    option: str = "--text_encoder1",
    transform: Transform | None = None,
) -> LlamaModel:
    """Load the LLaMA text encoder from a Comfy file, the first of a shard set, or a snapshot directory.

    With ``fp8`` (``--fp8_llm``) every Linear weight is stored as float8_e4m3fn while it streams in (the
    core's :func:`~tuner_core.fp8_linear_transform`); embeddings and norms stay in ``dtype``. Each Linear then
    upcasts its weight to the compute dtype when it runs (the core's ``Fp8Linear``), so the encoder computes
    in ``dtype`` at about half the weight memory. Works on CPU and GPU.
    """
    location = locate_weights(
        Path(path), subfolder=TEXT_ENCODER1_SUBFOLDER, patterns=LLAMA_PATTERNS, option=option
    )
    with open_weights(location, option) as source:
        require_model(source, LLAMA, option)
        config_dict = read_config(location, model_types=("llama",), nested="text_config")
        config = (
            LlamaConfig(**portable_llama_config(config_dict))
            if config_dict
            else llama_config_from_shapes(tensor_shapes(source, llama_tensor_name), source.description)
        )
        model = build_empty(lambda: LlamaModel(config))
        if fp8:
            # Only the Linear weights: the reference casts its embeddings back to the compute dtype, and its
            # fp32 RMSNorm forward is what transformers' LlamaRMSNorm computes anyway (normalise in float32,
            # scale in the input dtype), so the norms keep their stock forward with weights in ``dtype``.
            transform = chain_transforms(transform, fp8_linear_transform(model))
        load_weights(
            model, source, llama_tensor_name, device=device, dtype=dtype, option=option, transform=transform
        )
    if fp8:
        use_fp8_linears(model)
    return model
