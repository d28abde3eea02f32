"""Line charts as inline SVG text: no plotting library, no script, no font to fetch.

Used by the HTML report (training curves) and `segpipe history --plot` (a trend panel per
class). Pure: numbers in, an `<svg>` string out; every label is escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: Distinct colours for series without their own (Tableau 10).
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac")
_FONT = 'font-family="sans-serif" font-size="11"'
Scale = Callable[[float], float]  # a data coordinate -> its pixel position


@dataclass(frozen=True)
class Series:
    name: str
    points: tuple[tuple[float, float | None], ...]  # (x, y); y None leaves a gap
    colour: str = ""  # "" = the palette's next colour
    width: float = 1.5  # stroke width


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [low, high] (1, 2 or 5 times a power of 10)."""
    if not high > low:
        high = low + 1.0
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def _label(value: float) -> str:
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.0e}"
    return f"{value:g}"


def line_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str,
               width: int = 640, height: int = 260, log_y: bool = False,
               x_names: Sequence[str] = (), marks: Sequence[float] = ()) -> str:
    """One chart: a polyline per series, axes with round ticks, a legend on the right.
    `log_y`: a log10 y axis (for losses); `x_names`: tick labels at x = 0, 1, ... instead of
    numbers (commits); `marks`: x positions drawn as dashed vertical lines (eval set changed)."""
    left, right, top, bottom = 52, 130 if len(series) > 1 else 16, 24, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [(x, y) for s in series for x, y in s.points
              if y is not None and math.isfinite(y) and (y > 0 or not log_y)]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{left}" y="15" {_FONT} font-weight="bold">{html.escape(title)}</text>']
    if not values:
        parts.append(f'<text x="{left}" y="{top + plot_h / 2}" {_FONT}>no data</text></svg>')
        return "".join(parts)
    xs, ys = [v[0] for v in values], [math.log10(v[1]) if log_y else v[1] for v in values]
    x_ticks = list(range(len(x_names))) if x_names else nice_ticks(min(xs), max(xs))
    x_lo, x_hi = (min(x_ticks), max(x_ticks)) if not x_names else (-0.5, len(x_names) - 0.5)
    y_ticks = ([float(p) for p in range(math.floor(min(ys)), math.ceil(max(ys)) + 1)]
               if log_y else nice_ticks(min(ys), max(ys)))
    if len(y_ticks) < 2:
        y_ticks = [y_ticks[0] - 1, y_ticks[0]]
    y_lo, y_hi = y_ticks[0], y_ticks[-1]

    def px(x: float) -> float:
        return left + (x - x_lo) / ((x_hi - x_lo) or 1) * plot_w

    def py(y: float) -> float:
        v = math.log10(y) if log_y else y
        return top + plot_h - (v - y_lo) / ((y_hi - y_lo) or 1) * plot_h

    parts += _axes(left, top, plot_w, plot_h, x_ticks, y_ticks, x_names, log_y, px, py)
    parts += [f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle" {_FONT}>'
              f'{html.escape(x_label)}</text>',
              f'<text transform="translate(11 {top + plot_h / 2}) rotate(-90)" '
              f'text-anchor="middle" {_FONT}>{html.escape(y_label)}</text>']
    parts += [f'<line x1="{px(m):.1f}" x2="{px(m):.1f}" y1="{top}" y2="{top + plot_h}" '
              'stroke="#999" stroke-dasharray="4 3"/>' for m in marks]
    for k, s in enumerate(series):
        colour = s.colour or PALETTE[k % len(PALETTE)]
        parts += _polylines(s, colour, log_y, px, py)
        if len(series) > 1:
            y = top + 6 + 15 * k
            parts.append(f'<line x1="{left + plot_w + 10}" x2="{left + plot_w + 28}" y1="{y}" '
                         f'y2="{y}" stroke="{colour}" stroke-width="{max(2.0, s.width)}"/>'
                         f'<text x="{left + plot_w + 32}" y="{y + 4}" {_FONT}>'
                         f'{html.escape(s.name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _axes(left: float, top: float, plot_w: float, plot_h: float, x_ticks: Sequence[float],
          y_ticks: Sequence[float], x_names: Sequence[str], log_y: bool, px: Scale,
          py: Scale) -> list[str]:
    """Frame, grid lines and tick labels."""
    parts = [f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
             'stroke="#888"/>']
    for t in y_ticks:
        y = py(10 ** t if log_y else t)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#e4e4e4"/><text x="{left - 4}" y="{y + 4:.1f}" '
                     f'text-anchor="end" {_FONT}>{_label(10 ** t if log_y else t)}</text>')
    step = max(1, math.ceil(len(x_ticks) / 12))  # at most about 12 labels under the axis
    for i, t in enumerate(x_ticks):
        if i % step:
            continue
        name = x_names[int(t)] if x_names else _label(t)
        parts.append(f'<text x="{px(t):.1f}" y="{top + plot_h + 14}" text-anchor="middle" '
                     f'{_FONT}>{html.escape(name)}</text>')
    return parts


def _polylines(s: Series, colour: str, log_y: bool, px: Scale, py: Scale) -> list[str]:
    """One polyline per run of defined points (a None or non-positive-on-log y breaks it);
    a lone point is a dot."""
    runs: list[list[str]] = [[]]
    for x, y in s.points:
        if y is None or not math.isfinite(y) or (log_y and y <= 0):
            runs.append([])
        else:
            runs[-1].append(f"{px(x):.1f},{py(y):.1f}")
    out = []
    for run in runs:
        if len(run) == 1:
            cx, cy = run[0].split(",")
            out.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{colour}"/>')
        elif run:
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="{s.width}" '
                       f'points="{" ".join(run)}"><title>{html.escape(s.name)}</title>'
                       '</polyline>')
    return out


def grid(charts: Sequence[str], columns: int, cell_width: int, cell_height: int) -> str:
    """Charts of one size side by side, `columns` per row, as one SVG."""
    rows = math.ceil(len(charts) / columns) if charts else 1
    width, height = columns * cell_width, rows * cell_height
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}">']
    for k, chart in enumerate(charts):
        x, y = (k % columns) * cell_width, (k // columns) * cell_height
        # a nested <svg> with x/y places each chart without rewriting its coordinates
        parts.append(chart.replace("<svg ", f'<svg x="{x}" y="{y}" ', 1))
    parts.append("</svg>")
    return "".join(parts)
