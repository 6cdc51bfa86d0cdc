"""Hyper-parameters of the FramePack packed DiT, named as in the published ``config.json`` (diffusers keys)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import attrs

logger = logging.getLogger(__name__)


def _positive(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    if value < 1:
        raise ValueError(f"DiTConfig.{attribute.name} must be at least 1, got {value}")


def _non_negative(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    if value < 0:
        raise ValueError(f"DiTConfig.{attribute.name} must not be negative, got {value}")


def _axes(value: Any) -> tuple[int, int, int]:
    return tuple(int(v) for v in value)  # type: ignore[return-value]


@attrs.frozen(kw_only=True)
class DiTConfig:
    """The packed HunyuanVideo DiT of FramePack. Defaults are the released 13B model (FramePackI2V_HY, F1).

    Field names are the keys of the checkpoint's ``config.json``, so a config dict loads as is.
    """

    in_channels: int = attrs.field(default=16, validator=_positive)
    out_channels: int = attrs.field(default=16, validator=_positive)
    num_attention_heads: int = attrs.field(default=24, validator=_positive)
    attention_head_dim: int = attrs.field(default=128, validator=_positive)
    #: dual-stream blocks (``transformer_blocks``)
    num_layers: int = attrs.field(default=20, validator=_non_negative)
    #: single-stream blocks (``single_transformer_blocks``)
    num_single_layers: int = attrs.field(default=40, validator=_non_negative)
    #: blocks of the text token refiner (``context_embedder``)
    num_refiner_layers: int = attrs.field(default=2, validator=_non_negative)
    mlp_ratio: float = 4.0
    patch_size: int = attrs.field(default=2, validator=_positive)
    patch_size_t: int = attrs.field(default=1, validator=_positive)
    qk_norm: str = "rms_norm"
    guidance_embeds: bool = True
    #: LLaMA hidden size
    text_embed_dim: int = attrs.field(default=4096, validator=_positive)
    #: CLIP-L pooled output size
    pooled_projection_dim: int = attrs.field(default=768, validator=_positive)
    rope_theta: float = 256.0
    #: head-dim split of the 3-axis RoPE (frame, height, width)
    rope_axes_dim: tuple[int, int, int] = attrs.field(default=(16, 56, 56), converter=_axes)
    #: SigLIP hidden size
    image_proj_dim: int = attrs.field(default=1152, validator=_positive)
    has_image_proj: bool = True
    has_clean_x_embedder: bool = True
    image_condition_type: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.qk_norm != "rms_norm":
            raise ValueError(f"DiTConfig.qk_norm must be 'rms_norm' (FramePack's), got {self.qk_norm!r}")
        if not (self.has_image_proj and self.has_clean_x_embedder):
            raise ValueError("FramePack's DiT needs has_image_proj and has_clean_x_embedder set to true")
        if (self.patch_size_t, self.patch_size) != (1, 2):
            raise ValueError(
                f"FramePack's history embedders need patch_size 2 and patch_size_t 1, got "
                f"{self.patch_size} and {self.patch_size_t}"
            )
        if self.image_condition_type is not None:
            raise ValueError(f"image_condition_type {self.image_condition_type!r} is not FramePack's (null)")
        if sum(self.rope_axes_dim) != self.attention_head_dim or any(d % 2 for d in self.rope_axes_dim):
            raise ValueError(
                f"rope_axes_dim {self.rope_axes_dim} must be three even sizes summing to attention_head_dim "
                f"({self.attention_head_dim})"
            )
        if self.mlp_ratio <= 0:
            raise ValueError(f"DiTConfig.mlp_ratio must be positive, got {self.mlp_ratio}")

    @property
    def inner_dim(self) -> int:
        """Width of the token stream: heads times head dim (3072 for the 13B model)."""
        return self.num_attention_heads * self.attention_head_dim

    @property
    def mlp_dim(self) -> int:
        """Hidden width of the MLPs (12288 for the 13B model)."""
        return int(self.inner_dim * self.mlp_ratio)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Every config key this class knows."""
        return tuple(f.name for f in attrs.fields(cls))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, strict: bool = True) -> DiTConfig:
        """Build from a dict such as a ``config.json``. Keys starting with ``_`` are metadata and ignored.

        :param strict: unknown keys are an error (typos in user configs); otherwise they are logged and ignored.
        """
        known = set(cls.field_names())
        unknown = sorted(k for k in values if not k.startswith("_") and k not in known)
        if unknown and strict:
            raise ValueError(
                f"unknown DiT config keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        if unknown:
            logger.debug("ignoring DiT config keys %s", unknown)
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """The config as a ``config.json``-style dict (lists for tuples)."""
        data = attrs.asdict(self)
        data["rope_axes_dim"] = list(self.rope_axes_dim)
        return data
