"""Small server-side SVG line plots for the dashboard: no JavaScript library to vendor.

Must not import FastAPI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Plot:
    """An SVG polyline of a series of values, with its axis labels."""

    width: int
    height: int
    points: str
    """The polyline's `points` attribute ("x,y x,y ...")."""
    low: float
    high: float
    count: int


def line_plot(values: Sequence[float], *, width: int = 480, height: int = 120) -> Plot:
    """`values` (oldest first) scaled into a `width` by `height` box, 6 px of margin."""
    margin = 6
    if not values:
        return Plot(width, height, "", 0.0, 0.0, 0)
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    step = (width - 2 * margin) / max(1, len(values) - 1)
    points = " ".join(
        f"{margin + index * step:.1f},"
        f"{height - margin - (value - low) / span * (height - 2 * margin):.1f}"
        for index, value in enumerate(values)
    )
    return Plot(width, height, points, low, high, len(values))
