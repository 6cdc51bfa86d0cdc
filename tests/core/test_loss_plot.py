"""The loss plot: a valid 1200x600 PNG of raw and smoothed loss, learning rate and epochs, written atomically."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tuner_core.atomic import TEMP_SUFFIX
from tuner_core.training.loss_plot import (
    MAX_POINTS,
    build_loss_figure,
    default_window,
    downsample,
    moving_average,
    write_loss_plot,
)

ROOT = Path(__file__).resolve().parents[2]


def _losses(count: int, seed: int = 0) -> list[float]:
    steps = np.arange(count)
    noise = np.random.default_rng(seed).gamma(2.0, 0.02, count)
    return (0.1 + 0.3 * np.exp(-steps / max(count / 5, 1)) + noise).tolist()


def _lines(figure) -> dict[str, object]:
    """Every line and collection of ``figure``'s axes, by gid."""
    found = {}
    for ax in figure.axes:
        for artist in [*ax.lines, *ax.collections]:
            if artist.get_gid():
                found[artist.get_gid()] = artist
    return found


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (1200, 600)
        return np.asarray(image.convert("RGB"), dtype=np.float64)


def test_loss_plot_is_a_png_of_the_expected_size_and_not_blank(tmp_path):
    path = tmp_path / "run_loss.png"
    assert write_loss_plot(path, _losses(300)) == path
    pixels = _pixels(path)
    assert pixels.var() > 100  # far from a blank page
    assert (pixels.min(axis=2) < 200).mean() > 0.01  # a share of the pixels is drawn ink
    assert [p.name for p in tmp_path.iterdir()] == ["run_loss.png"]  # no temporary file left


def test_no_losses_write_nothing(tmp_path):
    assert write_loss_plot(tmp_path / "loss.png", []) is None
    assert not any(tmp_path.iterdir())


def test_raw_and_smoothed_losses_are_drawn_with_labelled_axes():
    losses = _losses(500)
    figure = build_loss_figure(losses)
    lines = _lines(figure)
    assert {"raw", "smoothed"} <= set(lines)
    assert list(lines["raw"].get_ydata()) == losses
    window = default_window(500)
    np.testing.assert_allclose(lines["smoothed"].get_ydata(), moving_average(losses, window))
    assert f"{window} steps" in lines["smoothed"].get_label()
    ax = figure.axes[0]
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "loss"
    assert "500 steps" in ax.get_title(loc="left")
    legend = figure.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["loss per step", lines["smoothed"].get_label()]
    assert tuple(figure.get_size_inches() * figure.dpi) == (1200, 600)


def test_moving_average_is_centred_and_skips_non_finite_values():
    np.testing.assert_allclose(moving_average([1, 2, 3, 4, 5], 3), [1.5, 2, 3, 4, 4.5])
    np.testing.assert_allclose(moving_average([1, math.nan, 3, math.inf, 5], 3), [1, 2, 3, 4, 5])
    assert np.isnan(moving_average([1, math.nan, math.nan, math.nan, 5], 3)[2])
    assert np.isnan(moving_average([1, 2, math.nan, 4, 5], 3, min_count=2)).tolist() == [False] * 5
    np.testing.assert_array_equal(moving_average([0.3] * 1000, 21), [0.3] * 1000)  # exact when flat


def test_nan_and_inf_losses_are_skipped_and_marked(tmp_path):
    losses = _losses(200)
    losses[50], losses[120] = math.nan, math.inf
    losses[150:170] = [math.nan] * 20
    figure = build_loss_figure(losses)
    lines = _lines(figure)
    assert len(lines["non_finite"].get_xdata()) == 22
    assert "22 NaN/inf" in lines["non_finite"].get_label()
    assert "skipped" in lines["smoothed"].get_label()
    smoothed = np.asarray(lines["smoothed"].get_ydata())
    assert np.isfinite(smoothed[[50, 120]]).all()  # a lone NaN/inf is averaged over
    assert np.isnan(smoothed[160])  # a stretch of them is a gap
    assert np.isfinite(np.asarray(lines["raw"].get_ydata())[[49, 51]]).all()
    _pixels(write_loss_plot(tmp_path / "loss.png", losses))


def test_all_non_finite_losses_still_write_a_plot(tmp_path):
    pixels = _pixels(write_loss_plot(tmp_path / "loss.png", [math.nan, math.inf, -math.inf]))
    assert pixels.var() > 10


def test_learning_rate_axis_only_when_rates_are_given():
    losses = _losses(100)
    assert len(build_loss_figure(losses).axes) == 1
    rates = [1e-4 * min(1.0, (s + 1) / 10) for s in range(100)]
    figure = build_loss_figure(losses, learning_rates=rates)
    assert len(figure.axes) == 2
    lr_ax = figure.axes[1]
    assert lr_ax.get_ylabel() == "learning rate"
    assert list(_lines(figure)["learning_rate"].get_ydata()) == rates
    assert lr_ax.get_ylim()[0] == 0
    assert "learning rate" in [t.get_text() for t in figure.legends[0].get_texts()]


def test_epoch_lines_only_when_epoch_ends_are_given():
    losses = _losses(100)
    assert "epoch_ends" not in _lines(build_loss_figure(losses))
    figure = build_loss_figure(losses, epoch_ends=[25, 50, 75, 100])
    ends = _lines(figure)["epoch_ends"]
    # Between each epoch's last step and the next one's first; the run's end is the axis' edge.
    assert [segment[0][0] for segment in ends.get_segments()] == [25.5, 50.5, 75.5]
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert texts == ["epoch 1", "epoch 2", "epoch 3", "epoch 4"]


def test_many_epochs_are_thinned_and_not_numbered():
    figure = build_loss_figure(_losses(10_000), epoch_ends=range(10, 10_001, 10))
    ends = _lines(figure)["epoch_ends"]
    assert len(ends.get_segments()) <= 30
    assert "every" in ends.get_label()
    assert not figure.axes[0].texts


def test_a_single_step_and_all_equal_losses(tmp_path):
    figure = build_loss_figure([0.5])
    assert _lines(figure)["raw"].get_marker() == "o"  # a lone point is visible
    assert "1 step)" in figure.axes[0].get_title(loc="left")
    _pixels(write_loss_plot(tmp_path / "one.png", [0.5]))

    figure = build_loss_figure([0.3] * 50)
    low, high = figure.axes[0].get_ylim()
    assert low < 0.3 < high and high - low > 0.01  # the flat line is centred on a readable axis
    _pixels(write_loss_plot(tmp_path / "flat.png", [0.3] * 50))


def test_log_scale_only_when_the_loss_spans_more_than_two_decades():
    assert build_loss_figure(_losses(100)).axes[0].get_yscale() == "linear"
    falling = [10 ** (2 - 4 * s / 99) for s in range(100)]  # 100 down to 0.01
    assert build_loss_figure(falling).axes[0].get_yscale() == "log"
    assert build_loss_figure([-1.0, *falling]).axes[0].get_yscale() == "linear"  # no log of <= 0


def test_downsample_keeps_the_envelope():
    x = np.arange(1, 100_001, dtype=np.float64)
    y = np.zeros(100_000)
    y[12_345], y[67_890] = 5.0, -3.0
    xs, ys = downsample(x, y, 1000)
    assert len(xs) == len(ys) <= 1000
    assert ys.max() == 5.0 and ys.min() == -3.0
    assert xs[0] == 1 and xs[-1] <= 100_000
    short = downsample(x[:10], y[:10])
    assert len(short[0]) == len(short[1]) == 10  # short series are drawn as they are


def test_100k_steps_are_downsampled(tmp_path):
    # Speed shows in the lines drawn, not in a wall time (machines here are too noisy to time).
    losses = _losses(100_000)
    rates = np.linspace(1e-4, 0, 100_000).tolist()
    path = write_loss_plot(
        tmp_path / "big.png", losses, learning_rates=rates, epoch_ends=range(0, 100_001, 1000)
    )
    figure = build_loss_figure(losses, learning_rates=rates)
    for gid in ("raw", "smoothed", "learning_rate"):
        assert len(_lines(figure)[gid].get_xdata()) <= MAX_POINTS + 1
    _pixels(path)


def test_an_interrupted_write_keeps_the_old_plot_and_leaves_no_temp(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    path = tmp_path / "loss.png"
    write_loss_plot(path, [1.0, 0.5])
    before = path.read_bytes()

    def half_written(self, target, **kwargs):
        Path(target).write_bytes(before[: len(before) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", half_written)
    with pytest.raises(KeyboardInterrupt):
        write_loss_plot(path, [2.0, 1.0, 0.5])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]


def test_a_killed_write_leaves_no_partial_plot(tmp_path):
    path = tmp_path / "loss.png"
    script = f"""
        import os, signal
        from pathlib import Path
        from matplotlib.figure import Figure
        from tuner_core.training.loss_plot import write_loss_plot

        def killed(self, target, **kwargs):
            Path(target).write_bytes(b"half a png")
            os.kill(os.getpid(), signal.SIGKILL)

        Figure.savefig = killed
        write_loss_plot(Path({str(path)!r}), [1.0, 0.5])
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, timeout=120)
    assert done.returncode == -signal.SIGKILL
    assert not path.exists()
    # What is left is a hidden temporary file that no glob for plots finds and the cleanup removes.
    assert all(p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX) for p in tmp_path.iterdir())


def test_importing_tuner_core_does_not_import_matplotlib_and_plots_use_no_pyplot(tmp_path):
    script = f"""
        import sys
        import tuner_core, tuner_core.training.loss_plot as loss_plot
        assert "matplotlib" not in sys.modules, "importing tuner_core imported matplotlib"
        loss_plot.write_loss_plot(__import__("pathlib").Path({str(tmp_path / "loss.png")!r}), [1.0, 0.5])
        assert "matplotlib.pyplot" not in sys.modules, "the loss plot imported pyplot"
    """
    env = {**os.environ, "MPLBACKEND": "module://nonexistent"}  # a pyplot would fail on this backend
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, env=env, check=True, timeout=120
    )
    assert (tmp_path / "loss.png").is_file()
