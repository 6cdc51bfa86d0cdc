"""One cache file's content, as an architecture produces it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    import torch


@attrs.frozen
class CacheRecord:
    """Tensors and metadata for one cache file, named by the architecture.

    :param name: file name inside the item's cache directory.
    :param tensors: tensor name to tensor (moved to CPU and made contiguous when written).
    :param metadata: string metadata; the store adds its fingerprint under ``tuner.fingerprint``.
    """

    name: str
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = attrs.field(factory=dict)
