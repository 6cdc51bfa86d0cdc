"""The loss plot every training run writes: loss per step, smoothed, with the learning rate and epochs.

:func:`build_loss_figure` draws the figure (testable without writing anything) and :func:`write_loss_plot`
saves it as a PNG through :func:`~tuner_core.atomic.atomic_write`. What is drawn:

* the raw loss of every step, thin and translucent; above :data:`MAX_POINTS` steps it is reduced to the
  minimum and maximum of each bucket of steps, so 100k steps draw as fast as 2k and keep their spikes;
* a centred moving average (:func:`moving_average`, window from :func:`default_window`, named in the
  legend), which skips NaN and infinite losses; those steps are marked with red ticks at the bottom;
* the learning rate on a second y axis, when given, and dotted lines where epochs end, when given;
* a log y axis when the finite losses are all positive and span more than :data:`LOG_SCALE_RATIO`
  (two decades): a run whose first steps are 1000x its last would otherwise show a flat line.

matplotlib is imported only when a figure is built, and only its object-oriented API is used
(``Figure`` + ``FigureCanvasAgg``, never ``pyplot``), so importing tuner keeps no plotting state and stays
fast, and plots can be built from any thread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuner_core.atomic import atomic_write

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "FIGURE_SIZE",
    "LOG_SCALE_RATIO",
    "MAX_POINTS",
    "build_loss_figure",
    "default_window",
    "downsample",
    "moving_average",
    "write_loss_plot",
]

#: Figure size in inches and resolution: 1200 x 600 pixels.
FIGURE_SIZE, DPI = (12.0, 6.0), 100
#: At most this many points per drawn line (the plot is ~1100 pixels wide).
MAX_POINTS = 4000
#: A y axis is logarithmic when the largest finite loss exceeds this multiple of the smallest.
LOG_SCALE_RATIO = 100.0
#: Epoch ends beyond this many are thinned to every k-th; beyond ``_EPOCH_LABELS`` they are not numbered.
_EPOCH_LINES, _EPOCH_LABELS = 30, 12

_RAW, _SMOOTH, _LR, _EPOCH, _BAD = "#4c8bd6", "#174a8c", "#e07b1a", "#777777", "#d62728"


def default_window(count: int) -> int:
    """The moving-average window for ``count`` steps: about 2% of the run, at least 5, at most ``count``."""
    window = max(5, round(count / 50)) | 1  # odd, so the window is centred on its step
    return max(1, min(window, count))


def moving_average(values: Sequence[float], window: int, min_count: int = 1) -> np.ndarray:
    """Centred moving average of ``values`` over ``window`` steps, skipping NaN and infinite values.

    Each point is the mean of the finite values among the ``window`` around it (fewer at the ends of the
    run); it is NaN where that window holds fewer than ``min_count``. Runs in O(n) with cumulative sums.
    """
    data = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(data)
    # Sums of the differences to the median: no rounding drift on long runs, exact for all-equal losses.
    centre = float(np.median(data[finite])) if finite.any() else 0.0
    sums = np.concatenate(([0.0], np.cumsum(np.where(finite, data - centre, 0.0))))
    counts = np.concatenate(([0], np.cumsum(finite)))
    index = np.arange(len(data))
    low = np.clip(index - (window - 1) // 2, 0, len(data))
    high = np.clip(index + window // 2 + 1, 0, len(data))
    count = counts[high] - counts[low]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (sums[high] - sums[low]) / count + centre
    return np.where(count >= max(min_count, 1), mean, np.nan)


def downsample(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` reduced to at most ``max_points`` points that keep the envelope of ``y``.

    Longer series are cut into ``max_points // 2`` buckets of consecutive points, each drawn as its
    minimum and its maximum (NaN ignored; a bucket of NaN stays a gap), so spikes stay visible.
    """
    if len(y) <= max_points:
        return x, y
    size = math.ceil(len(y) / (max_points // 2))
    buckets = math.ceil(len(y) / size)
    padded = np.concatenate((y, np.full(buckets * size - len(y), np.nan))).reshape(buckets, size)
    starts = x[::size]
    middles = starts + (size - 1) / 2
    xs = np.column_stack((starts, middles)).ravel()
    ys = np.column_stack((np.fmin.reduce(padded, axis=1), np.fmax.reduce(padded, axis=1))).ravel()
    return xs, ys


def _steps(count: int) -> str:
    return f"{count} step" if count == 1 else f"{count} steps"


def _log_scale(finite: np.ndarray) -> bool:
    """Whether finite losses ``finite`` read better on a log axis (all positive, > two decades)."""
    return finite.size > 1 and finite.min() > 0 and finite.max() / finite.min() > LOG_SCALE_RATIO


def _draw_losses(ax: Axes, steps: np.ndarray, losses: np.ndarray, window: int) -> np.ndarray:
    """The raw and smoothed loss lines and the non-finite markers; return the smoothed series."""
    finite = np.isfinite(losses)
    marker = "o" if len(losses) == 1 else None
    raw_x, raw_y = downsample(steps, np.where(finite, losses, np.nan))
    ax.plot(raw_x, raw_y, color=_RAW, alpha=0.35, lw=0.8, marker=marker, label="loss per step", gid="raw")
    # A gap, not a mean of a few stray steps, where a stretch of NaN/inf fills most of the window.
    smoothed = moving_average(losses, window, min_count=max(1, window // 4))
    label = f"moving average (centred, {_steps(window)})"
    if not finite.all():
        label += ", NaN/inf skipped"
    stride = max(1, math.ceil(len(smoothed) / MAX_POINTS))
    keep = np.unique(np.r_[np.arange(0, len(smoothed), stride), len(smoothed) - 1])
    ax.plot(steps[keep], smoothed[keep], color=_SMOOTH, lw=2.0, marker=marker, label=label, gid="smoothed")
    if not finite.all():
        bad = steps[~finite]
        bad = bad[:: max(1, math.ceil(len(bad) / MAX_POINTS))]
        ax.plot(
            bad,
            np.zeros(len(bad)),
            transform=ax.get_xaxis_transform(),  # x in steps, y at the bottom of the axes
            ls="none",
            marker="|",
            ms=10,
            mew=1.5,
            color=_BAD,
            clip_on=False,
            label=f"{int((~finite).sum())} NaN/inf losses (not drawn)",
            gid="non_finite",
        )
    if not finite.any():
        ax.text(0.5, 0.5, "no finite loss", transform=ax.transAxes, ha="center", color=_BAD)
    elif _log_scale(losses[finite]):
        ax.set_yscale("log")
        ax.set_ylabel("loss (log scale)")
    else:
        low, high = losses[finite].min(), losses[finite].max()
        if high - low <= 1e-9 * max(abs(high), 1e-12):  # all equal: centre the line, not an offset axis
            pad = 0.05 * abs(high) or 1.0
            ax.set_ylim(low - pad, high + pad)
        ax.ticklabel_format(axis="y", useOffset=False)
    return smoothed


def _draw_learning_rates(ax: Axes, learning_rates: Sequence[float]) -> Axes:
    """The learning rate of every step on a second y axis, which is returned."""
    lr_ax = ax.twinx()
    rates = np.asarray(learning_rates, dtype=np.float64)
    x, y = downsample(np.arange(1, len(rates) + 1, dtype=np.float64), rates)
    lr_ax.plot(x, y, color=_LR, lw=1.4, alpha=0.9, label="learning rate", gid="learning_rate")
    lr_ax.set_ylabel("learning rate", color=_LR)
    lr_ax.tick_params(axis="y", colors=_LR)
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    if np.isfinite(rates).any() and np.nanmin(rates[np.isfinite(rates)]) >= 0:
        lr_ax.set_ylim(bottom=0)
    # The loss axes above the learning rate's, with a transparent background so both show.
    ax.set_zorder(lr_ax.get_zorder() + 1)
    ax.patch.set_visible(False)
    return lr_ax


def _draw_epoch_ends(ax: Axes, epoch_ends: Sequence[int], last_step: int) -> None:
    """Dotted vertical lines at the steps that end an epoch (the run's own end is the axis' edge)."""
    ends = sorted({int(step) for step in epoch_ends if 1 <= step < last_step})
    if not ends:
        return
    every = math.ceil(len(ends) / _EPOCH_LINES)
    label = "epoch end" if every == 1 else f"epoch end (every {every} epochs)"
    lines = ends[every - 1 :: every]
    ax.vlines(
        [step + 0.5 for step in lines],  # between an epoch's last step and the next one's first
        0,
        1,
        transform=ax.get_xaxis_transform(),
        colors=_EPOCH,
        linestyles=":",
        lw=1.2,
        label=label,
        gid="epoch_ends",
    )
    if len(ends) < _EPOCH_LABELS:
        bounds = [0, *ends, last_step]
        for number, (start, end) in enumerate(zip(bounds, bounds[1:]), start=1):
            ax.text(
                (start + end) / 2 + 0.5,
                0.985,
                f"epoch {number}",
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize=8,
                color=_EPOCH,
            )


def _title(losses: np.ndarray, smoothed: np.ndarray) -> str:
    """The right-hand title: the last smoothed and the lowest loss."""
    finite = np.isfinite(smoothed)
    if not finite.any():
        return ""
    return f"last (smoothed) {smoothed[finite][-1]:.4g}   min {np.nanmin(losses[np.isfinite(losses)]):.4g}"


def build_loss_figure(
    losses: Sequence[float],
    *,
    learning_rates: Sequence[float] | None = None,
    epoch_ends: Sequence[int] | None = None,
    window: int | None = None,
    title: str | None = None,
) -> Figure:
    """A matplotlib ``Figure`` (with an Agg canvas, no pyplot) of ``losses``, the loss of steps 1, 2, ...

    :param learning_rates: the learning rate of each step, same order as ``losses``; drawn on a second
        y axis.
    :param epoch_ends: the global step that ended each epoch (1-based, like ``losses``' steps); a dotted
        line is drawn after each one but the run's last step.
    :param window: the moving-average window in steps; :func:`default_window` when ``None``.
    :param title: the title; ``"Training loss (N steps)"`` when ``None``.

    The lines carry a ``gid``: ``raw``, ``smoothed``, ``non_finite`` (markers of NaN/inf steps),
    ``learning_rate`` (on the second axes) and ``epoch_ends`` (a ``LineCollection``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    values = np.asarray(losses, dtype=np.float64).ravel()
    steps = np.arange(1, len(values) + 1, dtype=np.float64)
    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(True, which="major", alpha=0.3)
    ax.set_xlim(0.5, len(values) + 0.5)
    handles: list[Any] = []
    if len(values):
        smoothed = _draw_losses(ax, steps, values, window or default_window(len(values)))
        ax.set_title(_title(values, smoothed), loc="right", fontsize=9, color="#555555")
    if epoch_ends:
        _draw_epoch_ends(ax, epoch_ends, len(values))
    handles += ax.get_legend_handles_labels()[0]
    if learning_rates is not None and len(learning_rates):
        handles += _draw_learning_rates(ax, learning_rates).get_legend_handles_labels()[0]
    ax.set_title(title if title is not None else f"Training loss ({_steps(len(values))})", loc="left")
    if handles:  # below the axes, where it hides no data
        figure.legend(
            handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9, frameon=False
        )
    return figure


def write_loss_plot(
    path: Path,
    losses: Sequence[float],
    *,
    learning_rates: Sequence[float] | None = None,
    epoch_ends: Sequence[int] | None = None,
) -> Path | None:
    """Draw ``losses`` (one per step) to the PNG ``path``, atomically; ``None`` when there is nothing to draw.

    :param learning_rates: the learning rate of each step, drawn on a second y axis.
    :param epoch_ends: the global step that ended each epoch, drawn as dotted lines.

    See :func:`build_loss_figure`. The figure is freed once written.
    """
    if not len(losses):
        return None
    figure = build_loss_figure(losses, learning_rates=learning_rates, epoch_ends=epoch_ends)
    try:
        with atomic_write(path) as temp:
            figure.savefig(temp, format="png", dpi=DPI)
    finally:
        figure.clear()
    return Path(path)
