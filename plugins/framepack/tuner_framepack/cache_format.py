"""FramePack cache files: names, tensor keys and metadata, interchangeable with musubi-tuner's caches.

File names (W, H = the *original* media size, not the bucket):

* video sections ``{stem}_{pos:05d}-{count:03d}-{section:04d}_{W:04d}x{H:04d}_fp.safetensors``, where
  ``count`` is the extracted frame count before trimming to whole sections and ``section`` the time index;
* images and one-frame items ``{stem}_{W:04d}x{H:04d}_fp.safetensors``;
* text ``{stem}_fp_te.safetensors``.

Tensor keys end in the tensor's dtype name (``str(dtype)`` without ``torch.``); every ``latents_*`` key
also carries ``_{F}x{h}x{w}`` of the *target* latents before the dtype, because the reference loader
strips exactly one more ``_`` token from those keys. Loading reverses this into plain batch keys
(``latents``, ``latents_clean``, ``llama_vec`` ...) exactly as the reference's batch manager does.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

import torch

from tuner_core import CacheNaming, CacheRecord, ConfigError, DataError, MediaItem
from tuner_framepack.sections import SectionContext, plan_sections

logger = logging.getLogger(__name__)

#: ``architecture`` metadata value of every FramePack cache.
ARCHITECTURE = "framepack"
#: Short architecture name that ends cache file names.
ARCHITECTURE_SHORT = "fp"
#: ``format_version`` metadata value the reference writes.
FORMAT_VERSION = "1.0.1"

#: Batch keys of a latent cache (after :func:`batch_key`) and of a text cache.
LATENT_BATCH_KEYS = (
    "latents",
    "latents_clean",
    "latents_clean_2x",
    "latents_clean_4x",
    "image_embeddings",
    "latent_indices",
    "clean_latent_indices",
    "clean_latent_2x_indices",
    "clean_latent_4x_indices",
)
TEXT_BATCH_KEYS = ("llama_vec", "llama_attention_mask", "clip_l_pooler")

_TARGET_LATENTS_KEY = re.compile(r"latents_(\d+)x(\d+)x(\d+)_.+")
#: Every dtype name a key can end in, longest first so ``float8_e4m3fn`` wins over shorter names.
_DTYPE_NAMES = tuple(
    sorted(
        {
            str(value).removeprefix("torch.")
            for value in vars(torch).values()
            if isinstance(value, torch.dtype)
        },
        key=len,
        reverse=True,
    )
)


#: FramePack's cache file names: the reference's grammar with ``fp``, each clip split into sections.
NAMING = CacheNaming(ARCHITECTURE_SHORT)


def latent_cache_names(item: MediaItem, latent_window_size: int) -> list[str]:
    """Every latent cache file caching ``item`` writes, in time order (one per section for clips).

    :raises ClipTooShortError: a clip is shorter than one section (report and skip it).
    """
    if not item.is_video:
        return [NAMING.latent_name(item)]
    return [NAMING.latent_name(item, section) for section in range(section_count(item, latent_window_size))]


def section_count(item: MediaItem, latent_window_size: int) -> int:
    """The number of sections a clip is cached as.

    :raises ClipTooShortError: the clip is shorter than one section.
    """
    try:
        return plan_sections(item.frame_count, latent_window_size).sections
    except DataError as error:
        raise type(error)(f"{item.source} (clip from frame {item.frame_position}): {error}") from None


# -- tensors and metadata ---------------------------------------------------------------------------


def dtype_name(dtype: torch.dtype) -> str:
    """The dtype suffix of cache keys: ``str(dtype)`` without ``torch.`` (``float16``, ``int64``)."""
    return str(dtype).removeprefix("torch.")


def section_tensors(
    section: SectionContext, image_embeddings: torch.Tensor, *, dtype: torch.dtype = torch.float16
) -> dict[str, torch.Tensor]:
    """The tensors of one section cache, under the reference's keys.

    :param image_embeddings: SigLIP ``last_hidden_state`` of the clip's first frame, ``(729, 1152)`` or
        ``(1, 729, 1152)``; stored in ``dtype`` because its key reuses the latents' dtype suffix.
    :param dtype: storage dtype of latents and embeddings (the reference VAE's float16).
    """
    if image_embeddings.dim() == 3 and image_embeddings.shape[0] == 1:
        image_embeddings = image_embeddings[0]
    if image_embeddings.dim() != 2:
        raise DataError(
            f"image embeddings must be (tokens, features), got shape {tuple(image_embeddings.shape)}"
        )
    _, frames, height, width = section.latents.shape
    shape = f"{frames}x{height}x{width}"
    suffix = dtype_name(dtype)
    index = dtype_name(torch.int64)
    indices = section.indices
    # Insertion order follows the reference writer, so files list their keys the same way.
    candidates = {
        f"latents_{shape}_{suffix}": section.latents,
        f"image_embeddings_{suffix}": image_embeddings,
        f"latent_indices_{index}": indices.latent_indices,
        f"clean_latent_indices_{index}": indices.clean_latent_indices,
        f"latents_clean_{shape}_{suffix}": section.clean_latents,
        f"clean_latent_2x_indices_{index}": indices.clean_latent_2x_indices,
        f"latents_clean_2x_{shape}_{suffix}": section.clean_latents_2x,
        f"clean_latent_4x_indices_{index}": indices.clean_latent_4x_indices,
        f"latents_clean_4x_{shape}_{suffix}": section.clean_latents_4x,
    }
    # The key's suffix must tell the truth about the stored dtype.
    tensors = {
        key: value.to(torch.int64 if key.endswith(f"_{index}") else dtype)
        for key, value in candidates.items()
        if value is not None
    }
    return replace_nan(tensors, "section cache")


def latent_cache_metadata(original_size: tuple[int, int], frame_count: int | None) -> dict[str, str]:
    """Metadata of a latent cache: architecture, original size, format version, and the clip's frame count."""
    metadata = {
        "architecture": ARCHITECTURE,
        "width": f"{original_size[0]}",
        "height": f"{original_size[1]}",
        "format_version": FORMAT_VERSION,
    }
    if frame_count is not None:
        metadata["frame_count"] = f"{frame_count}"
    return metadata


def section_record(
    item: MediaItem,
    section: SectionContext,
    image_embeddings: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float16,
) -> CacheRecord:
    """The cache file of one section of ``item`` (or of a one-frame item): name, tensors and metadata."""
    return CacheRecord(
        name=NAMING.latent_name(item, section.section_index),
        tensors=section_tensors(section, image_embeddings, dtype=dtype),
        metadata=latent_cache_metadata(item.original_size, item.frame_count if item.is_video else None),
    )


def text_tensors(
    llama_vec: torch.Tensor, llama_attention_mask: torch.Tensor, clip_l_pooler: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The tensors of a text cache: LLaMA states ``(L, 4096)``, their bool mask ``(L,)``, CLIP-L pooler."""
    if llama_vec.dim() != 2 or llama_attention_mask.shape != llama_vec.shape[:1] or clip_l_pooler.dim() != 1:
        raise DataError(
            "text cache tensors must be llama_vec (tokens, features), llama_attention_mask (tokens,) and "
            f"clip_l_pooler (features,); got {tuple(llama_vec.shape)}, {tuple(llama_attention_mask.shape)}, "
            f"{tuple(clip_l_pooler.shape)}"
        )
    tensors = {
        f"llama_vec_{dtype_name(llama_vec.dtype)}": llama_vec,
        "llama_attention_mask": llama_attention_mask.to(torch.bool),
        f"clip_l_pooler_{dtype_name(clip_l_pooler.dtype)}": clip_l_pooler,
    }
    return replace_nan(tensors, "text cache")


def text_cache_metadata(caption: str) -> dict[str, str]:
    """Metadata of a text cache: architecture, the caption it encodes, format version."""
    return {"architecture": ARCHITECTURE, "caption1": caption, "format_version": FORMAT_VERSION}


def replace_nan(tensors: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Copy of ``tensors`` with NaNs set to 0, warning per affected key (as the reference does on save)."""
    cleaned = {}
    for key, value in tensors.items():
        if value.is_floating_point() and bool(torch.isnan(value).any()):
            logger.warning("%s tensor %s has NaN; replacing NaN with 0", where, key)
            value = torch.nan_to_num(value, nan=0.0, posinf=float("inf"), neginf=float("-inf"))
        cleaned[key] = value
    return cleaned


# -- loading ----------------------------------------------------------------------------------------


def strip_dtype_suffix(key: str) -> str:
    """``key`` without a trailing ``_{dtype}`` (longest dtype name first); unchanged without one."""
    for name in _DTYPE_NAMES:
        if key.endswith(f"_{name}"):
            return key[: -len(name) - 1]
    return key


def batch_key(cache_key: str) -> str:
    """The batch key of a cache key: ``*_mask`` verbatim, else dtype stripped and, for ``latents_*``, ``_FxHxW``."""
    if cache_key.endswith("_mask"):
        return cache_key
    key = strip_dtype_suffix(cache_key)
    if key.startswith("latents_"):
        key = key.rsplit("_", 1)[0]
    return key


def batch_tensors(
    latent_tensors: Mapping[str, torch.Tensor], text_tensors: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Merge a latent cache and its text cache into one batch element under plain batch keys.

    :raises DataError: two cache keys map to the same batch key (e.g. one tensor cached in two dtypes).
    """
    element: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    for cache_key, value in [*latent_tensors.items(), *text_tensors.items()]:
        key = batch_key(cache_key)
        if key in element:
            raise DataError(
                f"cache keys {sources[key]!r} and {cache_key!r} both hold {key!r}; delete the cache and re-cache"
            )
        element[key] = value
        sources[key] = cache_key
    return element


def cache_window_size(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> int | None:
    """The latent window size a loaded cache was made with, or ``None`` where its content does not show it.

    Video sections store W target latents (their key's ``F``) and always hold 2x/4x history latents (or
    have ``frame_count`` metadata). One-frame caches store one target; their window shows only in the
    fixed 2x (``W+2``) or 4x (``W+4``) index values.
    """
    if (metadata is not None and "frame_count" in metadata) or _has_history_latents(tensors):
        return _target_frames(tensors)
    for name, offset in (("clean_latent_2x_indices", 2), ("clean_latent_4x_indices", 4)):
        for key, value in tensors.items():
            if strip_dtype_suffix(key) == name and value.numel() > 0:
                return int(value.reshape(-1)[0]) - offset
    return None


def header_window_size(header: Mapping[str, tuple[str, tuple[int, ...]]]) -> int | None:
    """The latent window size of a video section cache from its header alone (``{key: (dtype, shape)}``).

    ``None`` for one-frame caches, whose window shows only in index values the header does not hold.
    """
    if not _has_history_latents(header):
        return None
    frames = _target_frames(header)
    for key, (_, shape) in header.items():
        if strip_dtype_suffix(key) == "latent_indices" and frames is not None and tuple(shape) != (frames,):
            raise DataError(
                f"cache key {key} has shape {tuple(shape)} but the target latents have {frames} frames"
            )
    return frames


def check_window_size(file_name: str, cached_window_size: int | None, latent_window_size: int) -> None:
    """Require that a cache made with ``cached_window_size`` fits the training ``--latent_window_size``.

    ``None`` (the cache does not show its window) is accepted.

    :raises ConfigError: naming the file and both window sizes.
    """
    if cached_window_size is not None and cached_window_size != latent_window_size:
        raise ConfigError(
            f"{file_name} was cached with latent window size {cached_window_size}, but training uses "
            f"--latent_window_size {latent_window_size}; re-cache with fp_latent_window_size = "
            f"{latent_window_size} or train with --latent_window_size {cached_window_size}"
        )


def _has_history_latents(keys: Iterable[str]) -> bool:
    """Whether cache keys include 2x/4x history latents, which only video section caches store."""
    return any(key.startswith(("latents_clean_2x_", "latents_clean_4x_")) for key in keys)


def _target_frames(keys: Iterable[str]) -> int | None:
    """``F`` of the target ``latents_{F}x{h}x{w}_{dtype}`` key, or ``None`` without one."""
    for key in keys:
        match = _TARGET_LATENTS_KEY.fullmatch(key)
        if match is not None:
            return int(match.group(1))
    return None
