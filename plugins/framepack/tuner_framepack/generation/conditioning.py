"""The per-section conditioning of a generated video: which prompt and which image each section uses.

Prompts and images are keyed by the section indices of :mod:`.section_prompts`; each section picks its
own with :func:`~.section_prompts.section_key`, as the reference does for ``--prompt`` and ``--image_path``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs
import torch

from tuner_framepack.generation.section_prompts import section_key, unused_section_keys

if TYPE_CHECKING:  # the encoders package imports transformers; only the type is needed here
    from tuner_framepack.encoders.text_encoding import PromptEmbeddings

logger = logging.getLogger(__name__)


@attrs.frozen(eq=False)
class ImageConditioning:
    """One conditioning image, encoded.

    :param start_latent: its scaled VAE latent ``(1, C, 1, h, w)`` (or ``(C, 1, h, w)``).
    :param image_embeddings: its SigLIP ``last_hidden_state`` ``(1, 729, D)`` (or ``(729, D)``).
    """

    start_latent: torch.Tensor = attrs.field(converter=lambda t: _batched(t, 5))
    image_embeddings: torch.Tensor = attrs.field(converter=lambda t: _batched(t, 3))


@attrs.frozen(eq=False)
class SectionConditioning:
    """What one section is conditioned on: its prompt, the negative prompt and its image.

    :param negative: the encoded negative prompt; only read when real CFG is on (guidance_scale != 1).
    """

    prompt: PromptEmbeddings
    image: ImageConditioning
    negative: PromptEmbeddings | None = None


@attrs.frozen(eq=False)
class SectionConditioner:
    """Prompts and images by section key; hands each section the ones the reference would pick.

    :param prompts: key -> encoded prompt; key 0 is required (every section's fallback).
    :param images: key -> encoded image; key 0 is required. Key 0's latent also begins an F1 video.
    :param negative: the encoded negative prompt (``None`` when real CFG is off).
    """

    prompts: Mapping[int, PromptEmbeddings]
    images: Mapping[int, ImageConditioning]
    negative: PromptEmbeddings | None = None

    def __attrs_post_init__(self) -> None:
        """Require the key-0 fallbacks, which :func:`parse_section_strings` always provides."""
        for name, mapping in (("prompts", self.prompts), ("images", self.images)):
            if 0 not in mapping:
                raise ValueError(
                    f"{name} need an entry for section key 0 (the default), got keys {sorted(mapping)}"
                )

    @property
    def start_latent(self) -> torch.Tensor:
        """The default image's latent (key 0): frame 0 of an F1 video, as in the reference."""
        return self.images[0].start_latent

    def for_section(self, section_index: int, sections: int) -> SectionConditioning:
        """The conditioning of the section at time index ``section_index`` of an S-section video."""
        prompt = self.prompts[section_key(self.prompts, section_index, sections)]
        image = self.images[section_key(self.images, section_index, sections)]
        return SectionConditioning(prompt=prompt, image=image, negative=self.negative)

    def warn_unused(self, sections: int) -> None:
        """Log section keys that name no section of an S-section video."""
        for name, mapping in (("prompt", self.prompts), ("image", self.images)):
            unused = unused_section_keys(mapping, sections)
            if unused:
                logger.warning(
                    "section %s keys %s name no section of this %d-section video", name, unused, sections
                )


def _batched(tensor: torch.Tensor, dims: int) -> torch.Tensor:
    """Add the batch dimension to a tensor one dimension short of ``dims``."""
    if tensor.dim() == dims - 1:
        return tensor.unsqueeze(0)
    if tensor.dim() != dims:
        raise ValueError(
            f"expected a {dims}-D (or unbatched {dims - 1}-D) tensor, got shape {tuple(tensor.shape)}"
        )
    return tensor
