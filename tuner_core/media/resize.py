"""Resize-to-cover then centre-crop: how every frame and image reaches its bucket size.

The picture is scaled (keeping its aspect ratio) until it covers the bucket, then the middle is cut out.
Enlarging uses Lanczos (Pillow); shrinking uses pixel-area averaging, the method of OpenCV's
``INTER_AREA`` that the reference tools use, computed here with numpy so no OpenCV is needed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def _area_weights(in_len: int, out_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Input indices and weights ``(out_len, taps)`` of area averaging along one axis.

    Output cell ``j`` covers the input span ``[j*s, (j+1)*s)`` with ``s = in_len / out_len``; each input
    cell counts with the fraction of it inside the span, divided by ``s``.
    """
    scale = in_len / out_len
    taps = int(np.ceil(scale)) + 1
    lo = np.arange(out_len, dtype=np.float64) * scale
    hi = np.minimum(lo + scale, in_len)
    first = np.floor(lo).astype(np.int64)
    index = first[:, None] + np.arange(taps)[None, :]
    overlap = np.minimum(index + 1, hi[:, None]) - np.maximum(index, lo[:, None])
    weights = (np.clip(overlap, 0.0, None) / scale).astype(np.float32)
    return np.minimum(index, in_len - 1), weights


def _area_axis(pixels: np.ndarray, out_len: int, axis: int) -> np.ndarray:
    """Shrink one axis by area averaging (a weighted sum of a few shifted gathers, float32)."""
    in_len = pixels.shape[axis]
    if out_len == in_len:
        return pixels
    index, weights = _area_weights(in_len, out_len)
    shape = [1] * pixels.ndim
    shape[axis] = out_len
    out = np.zeros(pixels.shape[:axis] + (out_len,) + pixels.shape[axis + 1 :], dtype=np.float32)
    for tap in range(index.shape[1]):
        out += np.take(pixels, index[:, tap], axis=axis) * weights[:, tap].reshape(shape)
    return out


def area_downscale(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Shrink ``(H, W[, C])`` uint8 pixels to ``size`` ``(width, height)`` by pixel-area averaging.

    :raises ValueError: if ``size`` is larger than the input on either axis or not positive.
    """
    width, height = size
    in_h, in_w = pixels.shape[:2]
    if not (0 < width <= in_w and 0 < height <= in_h):
        raise ValueError(f"area_downscale shrinks only: {in_w}x{in_h} cannot become {width}x{height}")
    # rows first: gathering whole rows is the cheap direction, and it shrinks the work of the second pass
    out = _area_axis(pixels, height, 0)
    out = _area_axis(out, width, 1)
    if out.dtype == np.uint8:
        return out
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_to_cover(pixels: np.ndarray, bucket: tuple[int, int]) -> np.ndarray:
    """Scale ``(H, W, C)`` uint8 pixels to cover ``bucket`` ``(width, height)``, then crop the centre.

    The scale is ``max(bucket_w / w, bucket_h / h)``; the scaled size is rounded to the nearest pixel;
    the crop keeps the middle (extra pixels go to the right/bottom when their count is odd).
    """
    height, width = pixels.shape[:2]
    bucket_w, bucket_h = bucket
    if (width, height) == (bucket_w, bucket_h):
        return pixels
    scale = max(bucket_w / width, bucket_h / height)
    new_w = int(width * scale + 0.5)
    new_h = int(height * scale + 0.5)
    if scale > 1:
        resized = np.asarray(Image.fromarray(pixels).resize((new_w, new_h), Image.Resampling.LANCZOS))
    else:
        resized = area_downscale(pixels, (new_w, new_h))
    left = (new_w - bucket_w) // 2
    top = (new_h - bucket_h) // 2
    return np.ascontiguousarray(resized[top : top + bucket_h, left : left + bucket_w])


__all__ = ["area_downscale", "resize_to_cover"]
