"""Cache file names in the reference tool's grammar, for any architecture's short name (``fp``, ``toy``).

W and H are the *original* media size, not the bucket's:

* a clip ``{stem}_{pos:05d}-{count:03d}_{W:04d}x{H:04d}_{short}.safetensors``; an architecture that splits a
  clip into several caches (FramePack's sections) adds their index: ``{pos:05d}-{count:03d}-{part:04d}``;
* an image ``{stem}_{W:04d}x{H:04d}_{short}.safetensors``;
* the text cache of a source ``{stem}_{short}_te.safetensors``, shared by all its clips.

Names are read back from the end, as the reference's training does, so a stem may contain ``_``.
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import TYPE_CHECKING

import attrs

from tuner_core.errors import DataError

if TYPE_CHECKING:
    from tuner_core.data.items import MediaItem

_SIZE_TOKEN = re.compile(r"(\d+)x(\d+)")
_CLIP_TOKEN = re.compile(r"(\d+)-(\d+)(?:-(\d+))?")


@attrs.frozen
class LatentCacheName:
    """The parts of a latent cache file name.

    :param stem: source file name without extension.
    :param width: original media width; ``height`` likewise.
    :param frame_position: first frame of the clip (``None`` for images).
    :param frame_count: extracted frame count of the clip (``None`` for images).
    :param part: index of the cache within its clip (``None`` for images, or clips cached as one file).
    """

    stem: str
    width: int
    height: int
    frame_position: int | None = None
    frame_count: int | None = None
    part: int | None = None

    @property
    def is_video(self) -> bool:
        """Whether the name is a clip's (it has a frame position and count)."""
        return self.frame_position is not None


@attrs.frozen
class CacheNaming:
    """The cache file names of one architecture, whose names end in ``_{short}``."""

    short: str

    @property
    def latent_suffix(self) -> str:
        """``_{short}.safetensors``: the end of every latent cache name."""
        return f"_{self.short}.safetensors"

    @property
    def text_suffix(self) -> str:
        """``_{short}_te.safetensors``: the end of every text cache name."""
        return f"_{self.short}_te.safetensors"

    def latent_name(self, item: MediaItem, part: int | None = None) -> str:
        """Name of the latent cache of ``item`` (its ``part`` for clips cached as several files)."""
        width, height = item.original_size
        size = f"{width:04d}x{height:04d}"
        if not item.is_video:
            return f"{item.stem}_{size}{self.latent_suffix}"
        clip = f"{item.frame_position:05d}-{item.frame_count:03d}" + ("" if part is None else f"-{part:04d}")
        return f"{item.stem}_{clip}_{size}{self.latent_suffix}"

    def text_name(self, stem: str) -> str:
        """Name of the text cache of the source file ``stem``."""
        return f"{stem}{self.text_suffix}"

    def is_latent(self, file_name: str) -> bool:
        """Whether ``file_name`` follows the latent cache grammar (a text cache does not)."""
        name = PurePath(file_name).name
        return name.endswith(self.latent_suffix) and _size_of(name.split("_")) is not None

    def is_text(self, file_name: str) -> bool:
        """Whether ``file_name`` is a text cache, ``{stem}_{short}_te.safetensors``."""
        name = PurePath(file_name).name
        return name.endswith(self.text_suffix) and len(name) > len(self.text_suffix)

    def parse_latent(self, file_name: str, *, is_video: bool | None = None) -> LatentCacheName:
        """Split a latent cache name into its parts; without ``is_video``, a ``digits-digits[-digits]``
        token before the size means a clip.

        :raises DataError: the name does not follow the grammar.
        """
        name = PurePath(file_name).name
        tokens = name.split("_")
        size = _size_of(tokens) if name.endswith(self.latent_suffix) else None
        if size is None:
            raise DataError(
                f"{file_name} is not a latent cache name of this architecture: expected "
                f"{{stem}}[_{{pos}}-{{count}}[-{{part}}]]_{{W}}x{{H}}_{self.short}.safetensors"
            )
        clip = _CLIP_TOKEN.fullmatch(tokens[-3]) if len(tokens) >= 4 else None
        if is_video is None:
            is_video = clip is not None
        if not is_video:
            return LatentCacheName(stem="_".join(tokens[:-2]), width=size[0], height=size[1])
        if clip is None:
            raise DataError(
                f"{file_name} is not a clip's cache name: expected "
                f"{{stem}}_{{pos:05d}}-{{count:03d}}[-{{part:04d}}]_{{W:04d}}x{{H:04d}}_{self.short}.safetensors"
            )
        position, count, part = clip.groups()
        return LatentCacheName(
            stem="_".join(tokens[:-3]),
            width=size[0],
            height=size[1],
            frame_position=int(position),
            frame_count=int(count),
            part=None if part is None else int(part),
        )

    def text_for(self, latent_file_name: str, *, is_video: bool | None = None) -> str:
        """Name of the text cache that belongs to a latent cache file."""
        return self.text_name(self.parse_latent(latent_file_name, is_video=is_video).stem)


def _size_of(tokens: list[str]) -> tuple[int, int] | None:
    """``(W, H)`` from the size token -2 of a split cache name, or ``None`` when it is not one."""
    if len(tokens) < 3:
        return None
    match = _SIZE_TOKEN.fullmatch(tokens[-2])
    return None if match is None else (int(match.group(1)), int(match.group(2)))
