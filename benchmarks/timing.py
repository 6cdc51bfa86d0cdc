"""Step timing shared by the benchmarks: the median of a few timed calls after untimed warm-up calls.

A median, not a mean: on shared machines an occasional step takes several times longer, and one such
step would move a mean of five. Benchmarks import it as a sibling module (``python benchmarks/x.py`` puts
this folder on ``sys.path``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_step(step: Callable[[], None], warmup: int, steps: int) -> float:
    """Median seconds of ``steps`` calls of ``step`` after ``warmup`` untimed ones (``step`` synchronises
    the device itself where it must)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
