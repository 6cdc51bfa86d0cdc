"""The training progress bar: steps, loss (running mean), learning rate, it/s and ETA."""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Mapping

from tqdm.auto import tqdm


class Progress:
    """A tqdm bar on stderr for the main process; silent elsewhere."""

    def __init__(self, total: int, *, enabled: bool, start: int = 0, window: int = 50) -> None:
        self._bar = tqdm(
            total=total, initial=start, desc="steps", disable=not enabled, file=sys.stderr, dynamic_ncols=True
        )
        self._recent: deque[float] = deque(maxlen=window)

    def update(self, metrics: Mapping[str, float]) -> None:
        """Advance one optimizer step and show its metrics."""
        self._recent.append(float(metrics["loss"]))
        self._bar.set_postfix(
            loss=f"{metrics['loss']:.4f}",
            avg=f"{sum(self._recent) / len(self._recent):.4f}",
            lr=f"{metrics['lr']:.2e}",
            refresh=False,
        )
        self._bar.update(1)

    def close(self) -> None:
        """End the bar."""
        self._bar.close()
