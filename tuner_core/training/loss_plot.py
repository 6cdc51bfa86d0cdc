"""A loss-curve PNG drawn with Pillow (raw loss in light grey, moving average in blue)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from tuner_core.atomic import atomic_write

WIDTH, HEIGHT, MARGIN = 800, 400, 50


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over at most ``window`` values."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def write_loss_plot(path: Path, losses: Sequence[float]) -> Path | None:
    """Draw ``losses`` (one per step) to ``path``; ``None`` when there is nothing to draw."""
    if not losses:
        return None
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    low, high = min(losses), max(losses)
    span = (high - low) or 1.0
    steps = max(len(losses) - 1, 1)

    def point(i: int, value: float) -> tuple[float, float]:
        x = MARGIN + (WIDTH - 2 * MARGIN) * i / steps
        y = HEIGHT - MARGIN - (HEIGHT - 2 * MARGIN) * (value - low) / span
        return x, y

    draw.rectangle([MARGIN, MARGIN, WIDTH - MARGIN, HEIGHT - MARGIN], outline="black")
    for series, colour in (
        (losses, (190, 190, 190)),
        (moving_average(losses, max(len(losses) // 20, 1)), (30, 90, 200)),
    ):
        points = [point(i, v) for i, v in enumerate(series)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        else:
            draw.ellipse(
                [points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=colour
            )
    draw.text((MARGIN, 15), f"loss per step ({len(losses)} steps)", fill="black")
    draw.text((5, MARGIN - 5), f"{high:.4g}", fill="black")
    draw.text((5, HEIGHT - MARGIN - 5), f"{low:.4g}", fill="black")
    draw.text((WIDTH - MARGIN - 30, HEIGHT - MARGIN + 10), str(len(losses)), fill="black")
    with atomic_write(path) as temp:
        image.save(temp, format="PNG")
    return path
