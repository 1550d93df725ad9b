"""Charts as inline SVG drawn on the server: bars (species per day) and step lines (species
accumulation curves).

Why SVG from Python rather than a charting library: nothing can be fetched from a CDN at the
reserve, a vendored JavaScript library would be a second thing to keep up to date, and an SVG
string is testable (the browser tests read its <title>s). Every chart carries a <title> and a
<desc> (role="img", read by screen readers), each bar or curve its own <title> (the tooltip
says the value), and is followed by the same numbers as a table (`fallback`), for a reader
that shows no images and for anyone who wants the exact values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sync_server.dashboard.html import Html, esc, join, table, tag

WIDTH, HEIGHT = 860, 300
"""The drawing's coordinate box (it scales to the page width: viewBox, max-width 100%)."""
LEFT, RIGHT, TOP, BOTTOM = 52, 40, 14, 46
"""Margins: room for the y axis's numbers on the left, the x axis's dates below, and half of
the last date on the right."""
HOLD = 0.04
"""A step line goes on this fraction of the x span past its last point, so a rise there shows."""
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
"""Okabe-Ito: eight colours told apart with the common colour-vision deficiencies; a ninth
series repeats the first (its legend entry and <title> still name it)."""
MAX_X_LABELS = 12
"""Dates under the x axis at most: more would overlap at this width."""
X_STEPS = 6
"""A continuous x axis (time) is labelled at this many even steps (seven labels)."""


@dataclass(frozen=True)
class Series:
    """One curve: its name (legend and <title>) and its (x, y) points in x order."""

    name: str
    points: tuple[tuple[float, float], ...]


def ticks(top: float, count: int = 5) -> list[float]:
    """Round axis values from 0 to at least `top` (1, 2 or 5 times a power of ten apart)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    step = max(step, 1.0)  # counts: no half species
    return [i * step for i in range(int(math.ceil(top / step)) + 1)]


def _number(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def _frame(title: str, description: str, chart_id: str, y_ticks: list[float], y_of: Callable[[float], float],
           y_label: str, body: str) -> Html:
    grid = []
    for value in y_ticks:
        y = y_of(value)
        grid.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e8e5"/>'
                    f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#5b6b63">'
                    f"{_number(value)}</text>")
    middle = TOP + (HEIGHT - TOP - BOTTOM) / 2
    axis = (f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{HEIGHT - BOTTOM}" y2="{HEIGHT - BOTTOM}" stroke="#8a9a92"/>'
            f'<text x="14" y="{middle:.0f}" font-size="11" fill="#5b6b63" transform="rotate(-90 14 {middle:.0f})" '
            f'text-anchor="middle">{esc(y_label)}</text>')
    named = esc(chart_id)
    return Html(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-labelledby="{named}-title {named}-desc" id="{named}">'
        f'<title id="{named}-title">{esc(title)}</title><desc id="{named}-desc">{esc(description)}</desc>'
        f'{"".join(grid)}{axis}{body}</svg>'
    )


def _x_labels(positions: Sequence[tuple[float, str]]) -> str:
    """Labels under the axis, thinned to MAX_X_LABELS evenly spaced ones."""
    every = max(1, math.ceil(len(positions) / MAX_X_LABELS))
    return "".join(f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" font-size="11" '
                   f'fill="#5b6b63">{esc(text)}</text>' for x, text in positions[::every])


def bar_chart(title: str, bars: Sequence[tuple[str, float]], chart_id: str, y_label: str,
              value_name: str = "", notes: Sequence[str] = ()) -> Html:
    """Vertical bars, one per (label, value), in the order given; an empty list draws an empty
    frame saying so. `notes[i]`, when given, ends bar i's <title> (its tooltip)."""
    top = max((value for _, value in bars), default=0)
    y_ticks = ticks(top)
    span = HEIGHT - TOP - BOTTOM

    def y_of(value: float) -> float:
        return HEIGHT - BOTTOM - span * value / y_ticks[-1]

    slot = (WIDTH - LEFT - RIGHT) / max(1, len(bars))
    width = max(1.0, min(40.0, slot * 0.7))
    shapes, labels = [], []
    for i, (label, value) in enumerate(bars):
        x = LEFT + slot * i + (slot - width) / 2
        y = y_of(value)
        shapes.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" '
                      f'height="{HEIGHT - BOTTOM - y:.1f}" fill="{PALETTE[0]}" data-label="{esc(label)}" '
                      f'data-value="{_number(value)}">'
                      f"<title>{esc(label)}: {_number(value)} {esc(value_name)}"
                      f"{esc(': ' + notes[i]) if i < len(notes) and notes[i] else ''}</title></rect>")
        labels.append((x + width / 2, label))
    if not bars:
        shapes.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" fill="#5b6b63">No data</text>')
    description = f"{len(bars)} bars; the largest is {_number(top)} {value_name}".strip()
    return _frame(title, description, chart_id, y_ticks, y_of, y_label, "".join(shapes) + _x_labels(labels))


def step_chart(title: str, series: Sequence[Series], chart_id: str, y_label: str,
               x_text: Callable[[float], str], x_label: str = "", x_ticks: Sequence[float] | None = None,
               x_from: float | None = None) -> Html:
    """One step line per series (a count that rises at each point and holds between them), on
    a shared x axis; `x_text` writes an x value under the axis, `x_label` names the axis.
    `x_ticks`: the x values to label (e.g. each day), default X_STEPS even steps; `x_from`:
    where the axis starts (e.g. 0 for time since a start), default the first point."""
    xs = [x for line in series for x, _ in line.points]
    top = max((y for line in series for _, y in line.points), default=0)
    y_ticks = ticks(top)
    low, high = (min(xs), max(xs)) if xs else (0.0, 1.0)
    low = low if x_from is None else min(low, x_from)
    if high == low:
        low, high = low - 1, high + 1
    end = high + (high - low) * HOLD
    span_y, span_x = HEIGHT - TOP - BOTTOM, WIDTH - LEFT - RIGHT

    def y_of(value: float) -> float:
        return HEIGHT - BOTTOM - span_y * value / y_ticks[-1]

    def x_of(value: float) -> float:
        return LEFT + span_x * (value - low) / (end - low)

    shapes = []
    for i, line in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        corners, last_y = [], 0.0
        for x, y in line.points:
            corners.append(f"{x_of(x):.1f},{y_of(last_y):.1f}")
            corners.append(f"{x_of(x):.1f},{y_of(y):.1f}")
            last_y = y
        corners.append(f"{x_of(end):.1f},{y_of(last_y):.1f}")
        final = line.points[-1][1] if line.points else 0
        shapes.append(f'<g class="curve" data-series="{esc(line.name)}" data-final="{_number(final)}">'
                      f"<title>{esc(line.name)}: {_number(final)} species</title>"
                      f'<polyline fill="none" stroke="{colour}" stroke-width="2.2" points="{" ".join(corners)}"/></g>')
    if not series:
        shapes.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" fill="#5b6b63">No data</text>')
    if x_ticks is None:
        x_ticks = [low + (high - low) * k / X_STEPS for k in range(X_STEPS + 1)]
    labels = [(x_of(x), x_text(x)) for x in x_ticks]
    description = f"{len(series)} curves; the highest reaches {_number(top)}"
    axis_name = (f'<text x="{LEFT + span_x / 2:.0f}" y="{HEIGHT - 8}" text-anchor="middle" font-size="11" '
                 f'fill="#5b6b63">{esc(x_label)}</text>') if x_label else ""
    return _frame(title, description, chart_id, y_ticks, y_of, y_label,
                  "".join(shapes) + _x_labels(labels) + axis_name)


def legend(series: Sequence[Series]) -> Html:
    """The curves' names beside their colours (HTML, so long names wrap)."""
    items = [tag("li", join([Html(f'<span class="swatch" style="background:{PALETTE[i % len(PALETTE)]}"></span>'),
                             line.name])) for i, line in enumerate(series)]
    return tag("ul", join(items), class_="legend", aria_hidden="true")


def figure(chart: Html, caption: str, fallback: Html, extra: Html = Html("")) -> Html:
    """A chart with its caption, then its numbers as a table in a disclosure."""
    details = tag("details", join([tag("summary", "The numbers as a table"), fallback]))
    return tag("figure", join([chart, extra, tag("figcaption", caption), details]))


def fallback(headers: Sequence[str], rows: Sequence[Sequence], caption: str, numeric=()) -> Html:
    return table(headers, rows, caption=caption, numeric=numeric, class_="chart-data")
