"""Reading images with Pillow: EXIF orientation applied, RGB (or RGBA for control images with alpha).

Decoder failures become :class:`~tuner_core.errors.DataError` naming the file, so callers can report
and skip the image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from tuner_core.errors import DataError

#: Image file extensions (lower case) read as images; AVIF only where Pillow was built with it.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp") + (
    (".avif",) if features.check("avif") else ()
)

# EXIF orientations that turn the picture by 90 degrees (width and height swap)
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112

# What Pillow raises for files it cannot read: broken headers, truncated data, bombs, odd chunks.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has an image extension (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image as displayed (after EXIF orientation), read from its header only.

    :raises DataError: if Pillow cannot identify the file.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION)
    except UnidentifiedImageError as exc:
        raise DataError(f"{path}: not an image Pillow can read") from exc
    except _DECODE_ERRORS as exc:
        raise DataError(f"{path}: cannot read the image: {exc}") from exc
    if orientation in _TRANSPOSED_ORIENTATIONS:
        return (height, width)
    return (width, height)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def load_image(path: Path, *, keep_alpha: bool = False) -> np.ndarray:
    """Decode an image to ``(H, W, C)`` uint8, turned upright by its EXIF orientation.

    :param keep_alpha: keep transparency as a 4th channel (control images); otherwise C is 3 (RGB).
        Images without alpha are always RGB.
    :raises DataError: if the file cannot be decoded (unknown format, truncated or corrupt data).
    """
    try:
        with Image.open(path) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
            if _has_alpha(upright):
                # through RGBA, so palette transparency is read as alpha (and then dropped for RGB)
                upright = upright.convert("RGBA")
            return np.array(upright.convert("RGBA" if keep_alpha and upright.mode == "RGBA" else "RGB"))
    except UnidentifiedImageError as exc:
        raise DataError(f"{path}: not an image Pillow can read") from exc
    except _DECODE_ERRORS as exc:
        raise DataError(f"{path}: cannot decode the image ({exc}); re-save or remove it") from exc


__all__ = ["IMAGE_EXTENSIONS", "image_size", "is_image_file", "load_image"]
