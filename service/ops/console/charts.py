"""The overview's chart: events received and processed per minute, as coordinates for an inline SVG.

Pure geometry, so the template only places what is computed here (and escapes nothing it did not
compute: every label is a number or a time).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

WIDTH, HEIGHT = 640, 180
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 24  # margins for the axis labels
SERIES = ("received", "processed")


@dataclass(frozen=True, slots=True)
class Series:
    """One line of the chart."""

    name: str
    points: str  # the SVG polyline's `points`
    total: int
    last: int  # the current minute's count


@dataclass(frozen=True, slots=True)
class Tick:
    """A label on an axis, at `position` (x or y, in SVG units)."""

    position: float
    label: str


@dataclass(frozen=True, slots=True)
class Row:
    """One minute, for the table that gives the chart's numbers in text."""

    minute: str
    counts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MinuteChart:
    """Everything the template draws: the lines, the axes and the same numbers as a table."""

    width: int
    height: int
    plot: tuple[float, float, float, float]  # left, top, right, bottom of the plotting area
    series: tuple[Series, ...]
    y_ticks: tuple[Tick, ...]
    x_ticks: tuple[Tick, ...]
    rows: tuple[Row, ...]
    peak: int


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5 x 10^n that is at least `value` (an axis top that reads well)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def _hhmm(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%H:%M")


def minute_chart(
    minutes: list[tuple[int, dict[str, int]]], *, series: tuple[str, ...] = SERIES
) -> MinuteChart:
    """The chart of `minutes` (oldest first, as `stats.read_minutes` returns them)."""
    left, top, right, bottom = LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM
    counts = {name: [bucket.get(name, 0) for _, bucket in minutes] for name in series}
    peak = max((max(values, default=0) for values in counts.values()), default=0)
    top_value = _nice_ceiling(max(peak, 1))
    step_x = (right - left) / max(len(minutes) - 1, 1)

    def y(value: int) -> float:
        return round(bottom - (bottom - top) * value / top_value, 1)

    lines = tuple(
        Series(
            name=name,
            points=" ".join(f"{round(left + i * step_x, 1)},{y(v)}" for i, v in enumerate(values)),
            total=sum(values),
            last=values[-1] if values else 0,
        )
        for name, values in counts.items()
    )
    y_ticks = tuple(Tick(y(v), str(v)) for v in sorted({0, top_value // 2, top_value}))
    last = len(minutes) - 1
    x_ticks = tuple(
        Tick(round(left + i * step_x, 1), _hhmm(minutes[i][0]))
        for i in sorted({0, last // 2, last})
        if minutes
    )
    rows = tuple(
        Row(_hhmm(start), tuple(counts[name][i] for name in series)) for i, (start, _) in enumerate(minutes)
    )
    return MinuteChart(WIDTH, HEIGHT, (left, top, right, bottom), lines, y_ticks, x_ticks, rows, peak)
