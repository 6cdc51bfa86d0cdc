"""Loading the packed DiT from every published format, streaming weights without a second copy in memory.

Accepted: the diffusers shard set (``lllyasviel/FramePackI2V_HY``: pass the first shard, the index or the
snapshot directory), and single files such as Kijai's ``FramePackI2V_HY_bf16.safetensors``. Key names are
the same in all of them, so no conversion happens.

Config fields are taken, in order of preference, from the ``config`` argument, the ``config.json`` beside
the weights, the tensor shapes of the checkpoint, and the 13B defaults.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from tuner_core import ModelLoadError
from tuner_core.attention import check_attention_backend
from tuner_core.weights import (
    CheckpointFiles,
    TensorInfo,
    Transform,
    load_into_model,
    open_checkpoint,
    resolve_checkpoint,
)
from tuner_framepack.dit.config import DiTConfig
from tuner_framepack.dit.model import HunyuanVideoTransformer3DModelPacked

logger = logging.getLogger(__name__)

#: ``_class_name`` values of config files that describe this model.
CONFIG_CLASS_NAMES = ("HunyuanVideoTransformer3DModelPacked", "HunyuanVideoFramepackTransformer3DModel")


def _explicit_fields(config: Mapping[str, Any] | Any | None) -> dict[str, Any]:
    """Fields the caller set: every key of a dict, every non-``None`` field of an attrs instance."""
    if config is None:
        return {}
    if isinstance(config, DiTConfig):
        return attrs.asdict(config)
    if attrs.has(type(config)):
        values = {k: v for k, v in attrs.asdict(config).items() if v is not None}
    elif isinstance(config, Mapping):
        values = dict(config)
    else:
        raise TypeError(f"config must be a dict or an attrs instance, got {type(config).__name__}")
    unknown = sorted(k for k in values if k not in DiTConfig.field_names())
    if unknown:
        raise ModelLoadError(
            f"unknown DiT config fields: {', '.join(unknown)}; known: {', '.join(DiTConfig.field_names())}"
        )
    return values


def _config_json_fields(path: Path | None) -> dict[str, Any]:
    """Known fields of a ``config.json`` that describes this model (other model classes' files are ignored)."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a readable JSON config: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: a model config must be a JSON object")
    class_name = data.get("_class_name")
    if class_name is not None and class_name not in CONFIG_CLASS_NAMES:
        logger.warning("ignoring %s: it describes a %s, not the FramePack DiT", path, class_name)
        return {}
    return {k: v for k, v in data.items() if k in DiTConfig.field_names()}


def _count_blocks(keys: list[str], prefix: str) -> int | None:
    """Number of blocks ``<prefix>.N.`` in ``keys`` (highest index + 1), or ``None`` if there are none."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    indices = [int(m.group(1)) for k in keys if (m := pattern.match(k))]
    return max(indices) + 1 if indices else None


def infer_config_from_shapes(infos: Mapping[str, TensorInfo]) -> dict[str, Any]:
    """The config fields that the tensor shapes of a checkpoint determine (a partial dict)."""

    def shape(key: str) -> tuple[int, ...] | None:
        info = infos.get(key)
        return info.shape if info is not None else None

    fields: dict[str, Any] = {}
    keys = list(infos)
    patch = shape("x_embedder.proj.weight")
    if patch is not None and len(patch) == 5:
        inner, fields["in_channels"] = patch[0], patch[1]
        fields["patch_size_t"], fields["patch_size"] = patch[2], patch[3]
        head = shape("transformer_blocks.0.attn.norm_q.weight") or shape(
            "single_transformer_blocks.0.attn.norm_q.weight"
        )
        if head is not None and inner % head[0] == 0:
            fields["attention_head_dim"] = head[0]
            fields["num_attention_heads"] = inner // head[0]
        mlp = shape("transformer_blocks.0.ff.net.0.proj.weight") or shape(
            "single_transformer_blocks.0.proj_mlp.weight"
        )
        if mlp is not None:
            fields["mlp_ratio"] = mlp[0] / inner
        out = shape("proj_out.weight")
        if out is not None:
            fields["out_channels"] = out[0] // (patch[2] * patch[3] * patch[4])
    for field, prefix in (
        ("num_layers", "transformer_blocks"),
        ("num_single_layers", "single_transformer_blocks"),
        ("num_refiner_layers", "context_embedder.token_refiner.refiner_blocks"),
    ):
        count = _count_blocks(keys, prefix)
        if count is not None:
            fields[field] = count
    for field, key in (
        ("text_embed_dim", "context_embedder.proj_in.weight"),
        ("pooled_projection_dim", "time_text_embed.text_embedder.linear_1.weight"),
        ("image_proj_dim", "image_projection.up.weight"),
    ):
        found = shape(key)
        if found is not None:
            fields[field] = found[1]
    if patch is not None:
        fields["guidance_embeds"] = "time_text_embed.guidance_embedder.linear_1.weight" in infos
    return fields


def resolve_config(
    config: Mapping[str, Any] | Any | None, files: CheckpointFiles, infos: Mapping[str, TensorInfo]
) -> DiTConfig:
    """Merge the explicit config, ``config.json``, shape inference and defaults (in that order of preference).

    :raises ModelLoadError: naming the checkpoint when the merged fields do not make a valid config.
    """
    explicit = _explicit_fields(config)
    from_json = _config_json_fields(files.config)
    inferred = infer_config_from_shapes(infos)
    merged = {**inferred, **from_json, **explicit}
    head_dim = merged.get("attention_head_dim", DiTConfig().attention_head_dim)
    if "rope_axes_dim" not in merged and sum(DiTConfig().rope_axes_dim) != head_dim:
        raise ModelLoadError(
            f"{files.describe()}: attention head dim is {head_dim}, so the default RoPE split "
            f"{DiTConfig().rope_axes_dim} does not fit and the checkpoint cannot tell the right one; pass "
            "config={'rope_axes_dim': (t, h, w)} with three even sizes summing to the head dim"
        )
    try:
        resolved = DiTConfig(**merged)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{files.describe()}: cannot build the DiT config: {exc}") from exc
    logger.debug("DiT config for %s: %s", files.describe(), resolved)
    return resolved


def load_dit(
    path: str | Path,
    *,
    config: Mapping[str, Any] | Any | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    attn_mode: str = "sdpa",
    split_attn: bool = False,
    keep_dtype: Callable[[str], bool] | None = None,
    transform: Transform | None = None,
) -> HunyuanVideoTransformer3DModelPacked:
    """Load the FramePack DiT from a checkpoint file, the first shard of a set, or a snapshot directory.

    The model is built on the meta device and each tensor is read, cast and placed on ``device`` in turn,
    so host memory peaks near the model's size.

    :param config: dict or attrs instance with diffusers config keys; set fields override the checkpoint's.
    :param dtype: cast floating-point weights to it (``None``: keep the stored dtype).
    :param attn_mode: ``sdpa`` (default), ``flash``, ``sage`` or ``xformers`` (or their aliases).
    :param split_attn: run attention one sample at a time.
    :param keep_dtype: weight names that keep their stored dtype even when ``dtype`` is given.
    :param transform: per-tensor rewrite while loading (memory strategies, e.g. fp8 quantisation).
    :raises ModelLoadError: missing files or shards, a config that does not fit, or mismatching keys/shapes.
    :raises NotAvailableError: the attention backend's package is not installed.
    """
    mode = check_attention_backend(attn_mode)  # fail before reading gigabytes
    files = resolve_checkpoint(path)
    with open_checkpoint(files) as source:
        resolved = resolve_config(config, files, source.infos())
        with torch.device("meta"):
            model = HunyuanVideoTransformer3DModelPacked(resolved)
        load_into_model(model, source, device=device, dtype=dtype, keep_dtype=keep_dtype, transform=transform)
    model.set_attention(mode, split_attn=split_attn)
    logger.info("loaded the FramePack DiT from %s", files.describe())
    return model.eval()
