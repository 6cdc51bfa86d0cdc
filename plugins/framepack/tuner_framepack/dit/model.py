"""FramePack's packed HunyuanVideo DiT, top to bottom.

Inputs become two token streams:

- image stream ``[4x history | 2x history | clean 1x | noisy]`` (see :mod:`.packing`), rotated by 3-axis RoPE;
- text stream ``[SigLIP image tokens | refined LLaMA tokens]``, not rotated.

Both go through ``num_layers`` dual-stream blocks (separate weights per stream, joint attention), are joined
into one sequence for ``num_single_layers`` single-stream blocks, and the noisy tokens are read out through
a modulated LayerNorm and ``proj_out`` as a flow velocity ``(B, 16, T, H, W)``. Every block and the output
head are conditioned on ``temb`` = timestep + distilled guidance + pooled CLIP-L text.

Speed and memory choices that keep the numbers of the reference: RoPE is built once per forward (for the
whole joint sequence, identity on text); text is cropped to the longest valid length, so batch 1 (and any
batch whose texts have equal lengths) runs with no attention mask; the streams are joined once, not per
single block. Gradient checkpointing and block swap are not implemented here: the core wraps the blocks of
``transformer_blocks`` / ``single_transformer_blocks`` from outside, and the forward calls each block as a
module with tensor arguments so such wrappers see every call.
"""

from __future__ import annotations

import torch
from torch import nn

from tuner_core.attention import check_attention_backend
from tuner_framepack.dit.config import DiTConfig
from tuner_framepack.dit.double_block import HunyuanVideoTransformerBlock
from tuner_framepack.dit.embeddings import ImageProjection, PatchEmbed, TimeTextEmbedding
from tuner_framepack.dit.output import OutputNorm, unpatchify
from tuner_framepack.dit.packing import HistoryPatchEmbed, TokenGroup, frame_index_rows, history_group
from tuner_framepack.dit.rope import rope_tokens
from tuner_framepack.dit.single_block import HunyuanVideoSingleTransformerBlock
from tuner_framepack.dit.token_refiner import TokenRefiner

#: The token refiner's MLP ratio is fixed (the checkpoint's ``mlp_ratio`` applies to the main blocks only).
REFINER_MLP_RATIO = 4.0


class HunyuanVideoTransformer3DModelPacked(nn.Module):
    """The FramePack DiT. Module names and state-dict keys are those of the published checkpoints.

    Attributes that are not weights:

    - ``fp32_proj_out``: run the final ``proj_out`` in float32 (weights and input), as the official demo does
      for inference. Off by default (training); the output is float32 when on. Switching it off puts
      ``proj_out`` back in its earlier dtype (training goes on in bf16 after a sample).
    - ``attn_mode`` / ``split_attn``: the attention backend; change them with :meth:`set_attention`.
    """

    def __init__(self, config: DiTConfig | None = None) -> None:
        """Build the model (use ``torch.device("meta")`` around this to allocate nothing before loading)."""
        super().__init__()
        self.config = config = config or DiTConfig()
        dim = config.inner_dim
        patch = (config.patch_size_t, config.patch_size, config.patch_size)
        heads, head_dim = config.num_attention_heads, config.attention_head_dim

        self.x_embedder = PatchEmbed(patch, config.in_channels, dim)
        self.clean_x_embedder = HistoryPatchEmbed(config.in_channels, dim)
        self.context_embedder = TokenRefiner(
            config.text_embed_dim, dim, heads, int(dim * REFINER_MLP_RATIO), config.num_refiner_layers
        )
        self.image_projection = ImageProjection(config.image_proj_dim, dim)
        self.time_text_embed = TimeTextEmbedding(dim, config.pooled_projection_dim, config.guidance_embeds)
        self.transformer_blocks = nn.ModuleList(
            [HunyuanVideoTransformerBlock(heads, head_dim, config.mlp_dim) for _ in range(config.num_layers)]
        )
        self.single_transformer_blocks = nn.ModuleList(
            [
                HunyuanVideoSingleTransformerBlock(heads, head_dim, config.mlp_dim)
                for _ in range(config.num_single_layers)
            ]
        )
        self.norm_out = OutputNorm(dim)
        self.proj_out = nn.Linear(dim, config.patch_size_t * config.patch_size**2 * config.out_channels)

        self._proj_out_dtype: torch.dtype | None = None  # what proj_out held before it ran in float32
        self.fp32_proj_out = False
        self.attn_mode = "sdpa"
        self.split_attn = False

    @property
    def fp32_proj_out(self) -> bool:
        """Whether the final ``proj_out`` runs in float32 (see the class docstring)."""
        return self._fp32_proj_out

    @fp32_proj_out.setter
    def fp32_proj_out(self, value: bool) -> None:
        self._fp32_proj_out = bool(value)
        if not value and self._proj_out_dtype is not None:
            self.proj_out.to(self._proj_out_dtype)  # float32 back to bf16/fp16 is exact
            self._proj_out_dtype = None

    def set_attention(self, mode: str = "sdpa", *, split_attn: bool = False, training: bool = False) -> None:
        """Choose the attention backend of every attention layer (``sdpa``, ``flash``, ``sage``, ``xformers``).

        :param split_attn: run attention one sample at a time over its valid tokens.
        :param training: reject backends without a backward pass.
        :raises ConfigError: unknown backend, or SageAttention for training.
        :raises NotAvailableError: the backend's package is not installed.
        """
        self.attn_mode = check_attention_backend(mode, training=training)
        self.split_attn = split_attn
        for module in self.modules():
            if module is not self and hasattr(module, "attn_mode"):
                module.attn_mode = self.attn_mode
                module.split_attn = split_attn

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        pooled_projections: torch.Tensor,
        guidance: torch.Tensor | None = None,
        latent_indices: torch.Tensor | None = None,
        clean_latents: torch.Tensor | None = None,
        clean_latent_indices: torch.Tensor | None = None,
        clean_latents_2x: torch.Tensor | None = None,
        clean_latent_2x_indices: torch.Tensor | None = None,
        clean_latents_4x: torch.Tensor | None = None,
        clean_latent_4x_indices: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow velocity of the noisy latents.

        :param hidden_states: noisy latents ``(B, C, T, H, W)``; H and W multiples of the patch size.
        :param timestep: ``(B,)`` noise level on the 0-1000 scale.
        :param encoder_hidden_states: LLaMA states ``(B, L, text_embed_dim)``, padded at the end.
        :param encoder_attention_mask: ``(B, L)`` mask of valid text tokens (a prefix of each row), or ``None``.
        :param pooled_projections: CLIP-L pooled output ``(B, pooled_projection_dim)``.
        :param guidance: ``(B,)`` embedded CFG scale x 1000 (required by guidance-distilled checkpoints).
        :param latent_indices: frame positions of the noisy latents, ``(B, T)`` or ``(T,)``; default ``0..T-1``.
        :param clean_latents: clean 1x context ``(B, C, N, H, W)`` with ``clean_latent_indices`` ``(B, N)``.
        :param clean_latents_2x: 2x-compressed history with ``clean_latent_2x_indices``.
        :param clean_latents_4x: 4x-compressed history with ``clean_latent_4x_indices``.
        :param image_embeddings: SigLIP ``last_hidden_state`` ``(B, 729, image_proj_dim)`` of the start image.
        :returns: velocity ``(B, out_channels, T, H, W)``.
        """
        cfg = self.config
        batch, _, frames, height, width = hidden_states.shape
        pt, p = cfg.patch_size_t, cfg.patch_size
        if frames % pt or height % p or width % p:
            raise ValueError(
                f"latent frames/height/width {(frames, height, width)} must be multiples of the patch {(pt, p, p)}"
            )
        if image_embeddings is None:
            raise ValueError(
                "FramePack is image-to-video: pass image_embeddings (SigLIP states of the start image)"
            )
        grid = (frames // pt, height // p, width // p)
        axes, theta = cfg.rope_axes_dim, cfg.rope_theta

        # -- image stream: [4x, 2x, clean 1x, noisy] tokens and their RoPE -----------------------------------
        rows = frame_index_rows(latent_indices, batch, grid[0], hidden_states.device)
        groups = []
        for group, latents, indices in (
            ("4x", clean_latents_4x, clean_latent_4x_indices),
            ("2x", clean_latents_2x, clean_latent_2x_indices),
            ("clean", clean_latents, clean_latent_indices),
        ):
            if latents is not None:
                groups.append(
                    history_group(self.clean_x_embedder, group, latents, indices, grid[1:], axes, theta)
                )
        groups.append(
            TokenGroup(self.x_embedder(hidden_states), rope_tokens(rows, grid[1], grid[2], axes, theta))
        )
        image = (
            torch.cat([g.tokens for g in groups], dim=1) if len(groups) > 1 else groups[0].tokens.contiguous()
        )
        n_image = image.shape[1]
        n_noisy = groups[-1].tokens.shape[1]

        # -- conditioning and text stream: [SigLIP, valid LLaMA tokens] ------------------------------------
        temb = self.time_text_embed(timestep, pooled_projections, guidance)
        lengths = _text_lengths(encoder_attention_mask, encoder_hidden_states.shape[:2])
        text_len = max(lengths)
        text_mask = None
        if min(lengths) < text_len:
            text_mask = encoder_attention_mask[:, :text_len].to(device=image.device, dtype=torch.bool)
        text = self.context_embedder(encoder_hidden_states[:, :text_len], timestep, text_mask)
        text = torch.cat([self.image_projection(image_embeddings), text], dim=1)

        attention_mask = None
        if text_mask is not None:
            always = text_mask.new_ones(batch, n_image + text.shape[1] - text_len)
            attention_mask = torch.cat([always, text_mask], dim=1)
        rope_freqs = _joint_rope([g.freqs for g in groups], text.shape[1])

        # -- blocks --------------------------------------------------------------------------------------
        for block in self.transformer_blocks:
            image, text = block(image, text, temb, rope_freqs, attention_mask)
        joint = torch.cat([image, text], dim=1)
        del image, text
        for block in self.single_transformer_blocks:
            joint = block(joint, temb, rope_freqs, attention_mask)

        # -- output: the noisy tokens only -----------------------------------------------------------------
        out = self.norm_out(joint[:, n_image - n_noisy : n_image], temb)
        if self.fp32_proj_out:
            if self.proj_out.weight.dtype != torch.float32:
                self._proj_out_dtype = self.proj_out.weight.dtype
                self.proj_out.float()
            out = out.float()
        out = self.proj_out(out)
        return unpatchify(out, grid, (pt, p, p))


def _text_lengths(mask: torch.Tensor | None, shape: torch.Size | tuple[int, int]) -> list[int]:
    """Valid text length per sample; the mask must mark a prefix (padding at the end), as text encoders pad."""
    batch, length = shape
    if mask is None:
        return [length] * batch
    if tuple(mask.shape) != (batch, length):
        raise ValueError(f"encoder_attention_mask must be {(batch, length)}, got {tuple(mask.shape)}")
    valid = mask.detach().to(device="cpu").bool()
    lengths = valid.sum(dim=1)
    if not torch.equal(valid, torch.arange(length)[None, :] < lengths[:, None]):
        raise ValueError(
            "encoder_attention_mask must mark a prefix of each row (valid tokens first, padding last)"
        )
    return lengths.tolist()


def _joint_rope(tables: list[torch.Tensor], text_len: int) -> torch.Tensor:
    """Concatenate the groups' RoPE tables and append identity rotations for the ``text_len`` text tokens."""
    batch = max(t.shape[0] for t in tables)
    tables = [t.expand(batch, -1, -1) for t in tables]
    identity = tables[0].new_ones(batch, text_len, tables[0].shape[-1])
    return torch.cat([*tables, identity], dim=1)
