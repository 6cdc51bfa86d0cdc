"""Aspect-ratio buckets: the ``(width, height)`` every image or clip is resized and cropped to.

With ``enable_bucket`` a dataset gets a set of sizes of about the same area as its ``resolution`` (so every
bucket costs about the same to train) and each medium goes to the bucket of nearest aspect ratio. Without
it, every medium is cropped to ``resolution``. Sizes are multiples of the architecture's bucket step.
"""

from __future__ import annotations

import math

import attrs

Size = tuple[int, int]


def floor_to_step(value: int, step: int) -> int:
    """``value`` rounded down to a multiple of ``step``."""
    return value - value % step


def bucket_resolutions(resolution: Size, step: int) -> tuple[Size, ...]:
    """All bucket sizes for a target ``resolution`` ``(width, height)``, sorted.

    Widths run from ``floor(sqrt(A)/2)`` to ``sqrt(A)`` in steps (A = width * height); each width gets the
    largest height on the step grid that keeps the area at most A, and each pair is also used transposed.
    """
    area = resolution[0] * resolution[1]
    side = int(math.sqrt(area))
    smallest = floor_to_step(side // 2, step)
    sizes: set[Size] = set()
    for width in range(max(smallest, step), side + step, step):
        height = floor_to_step(area // width, step)
        if height < step:
            continue
        sizes.add((width, height))
        sizes.add((height, width))
    return tuple(sorted(sizes))


def fit_bucket(size: Size, resolution: Size, step: int) -> Size:
    """A size near ``size``'s aspect ratio whose area is about that of ``resolution`` (no fixed bucket list).

    Used for control images with ``control_resolution``: the width ``sqrt(A*aspect)`` on the step grid and
    its two neighbours either side are tried, each with the height that keeps the area at most A, and the
    one of nearest aspect ratio wins.
    """
    area = resolution[0] * resolution[1]
    width, height = size
    aspect = width / height
    base = floor_to_step(int(math.sqrt(area * aspect)), step)
    best: Size | None = None
    best_error = math.inf
    for offset in range(-2, 3):
        w = base + offset * step
        if w < step:
            continue
        h = floor_to_step(area // w, step)
        if h < step:
            continue
        error = abs(w / h - aspect)
        if error < best_error:
            best, best_error = (w, h), error
    if best is None:
        return (max(step, base), max(step, floor_to_step(int(math.sqrt(area / aspect)), step)))
    return best


@attrs.frozen
class BucketSelector:
    """Chooses the bucket of each medium of one dataset.

    :param resolution: the dataset's ``resolution`` ``(width, height)``.
    :param step: the architecture's bucket step (widths and heights are multiples of it).
    :param enable_bucket: use aspect-ratio buckets; otherwise every medium gets ``resolution``.
    :param no_upscale: ``bucket_no_upscale``: media of smaller area than ``resolution`` keep their own size
        (rounded down to the step) instead of being enlarged; only with ``enable_bucket``.
    """

    resolution: Size
    step: int
    enable_bucket: bool = False
    no_upscale: bool = False
    buckets: tuple[Size, ...] = attrs.field(init=False)
    _aspects: tuple[float, ...] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.step < 1:
            raise ValueError(f"bucket step must be positive, got {self.step}")
        if self.enable_bucket:
            buckets = bucket_resolutions(self.resolution, self.step)
        else:
            # a fixed resolution still has to sit on the architecture's grid
            w, h = self.resolution
            buckets = ((floor_to_step(w, self.step), floor_to_step(h, self.step)),)
        if not buckets or min(min(b) for b in buckets) < self.step:
            raise ValueError(
                f"resolution {self.resolution[0]}x{self.resolution[1]} is too small for a bucket step of {self.step}"
            )
        object.__setattr__(self, "buckets", buckets)
        object.__setattr__(self, "_aspects", tuple(w / h for w, h in buckets))

    @property
    def area(self) -> int:
        """The target area (pixels) of the dataset's ``resolution``."""
        return self.resolution[0] * self.resolution[1]

    def select(self, size: Size) -> Size:
        """The bucket ``(width, height)`` for a medium of ``size`` ``(width, height)``.

        The result may have a zero side only with ``no_upscale`` and a medium narrower than one step;
        callers report such media as too small.
        """
        width, height = size
        if width < 1 or height < 1:
            raise ValueError(f"media size must be positive, got {width}x{height}")
        if self.enable_bucket and self.no_upscale and width * height <= self.area:
            return (floor_to_step(width, self.step), floor_to_step(height, self.step))
        if len(self.buckets) == 1:
            return self.buckets[0]
        aspect = width / height
        # first of equally near buckets in sorted order, as the reference's argmin
        best = min(range(len(self.buckets)), key=lambda i: abs(self._aspects[i] - aspect))
        return self.buckets[best]


__all__ = ["BucketSelector", "Size", "bucket_resolutions", "fit_bucket", "floor_to_step"]
