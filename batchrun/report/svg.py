"""Charts as inline SVG text: histograms, lines over time, stacked bars and horizontal bars.

Pure functions from numbers to markup, with no dependency and no script: the page embeds the
result as is, so it opens offline and renders the same everywhere. Hovering a bar shows its
exact value through SVG ``<title>``. This module knows nothing about runs or polars.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

__all__ = [
    "PALETTE",
    "WIDE",
    "Line",
    "empty_chart",
    "fmt",
    "hbar_chart",
    "histogram_chart",
    "line_chart",
    "nice_ticks",
    "stacked_bar_chart",
]

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1"]
GRID, INK, MUTED = "#e6e8eb", "#1f2328", "#656d76"

W, H = 580, 250  # a half-width panel; drawn at about 1:1 so text keeps its size
WIDE = 1180  # a full-width panel
LEFT, RIGHT, TOP, BOTTOM = 56, 14, 30, 40


@dataclass(frozen=True)
class Line:
    """One series of a line chart: a value per bin."""

    name: str
    values: Sequence[float]
    color: str
    fill: bool = True


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 2.5 or 5 times a power of ten apart)."""
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return [low]
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def fmt(value: float) -> str:
    """A short label: 0, 0.05, 1.2, 15, 1.2k, 3.4M."""
    size = abs(value)
    if size >= 1e6:
        return f"{value / 1e6:.3g}M"
    if size >= 1e4:
        return f"{value / 1e3:.3g}k"
    if size >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.3g}"


def time_unit(span_s: float) -> tuple[float, str]:
    """Divisor and name of the unit for a time axis spanning ``span_s`` seconds."""
    if span_s > 2 * 3600:
        return 3600.0, "hours"
    if span_s > 180:
        return 60.0, "minutes"
    return 1.0, "seconds"


def histogram_chart(
    edges: Sequence[float],
    counts: Sequence[int],
    *,
    unit: str,
    scale_by: float = 1.0,
    color: str = PALETTE[0],
    markers: Mapping[str, float | None] | None = None,
) -> str:
    """Bars of ``counts`` over ``edges``, with dashed lines at ``markers`` (e.g. p50, p90).

    Edges and markers are multiplied by ``scale_by`` for display (1000 for milliseconds).
    """
    shown = [edge * scale_by for edge in edges]
    marks = {k: v * scale_by for k, v in (markers or {}).items() if v is not None}
    top = TOP + 12 * max(len(marks) - 1, 0)
    scale = _Scale(shown[0], shown[-1], 0.0, max(max(counts), 1) * 1.05, top=top)
    parts = scale.axes(x_label=unit, y_label="rows")
    for i, n in enumerate(counts):
        if n:
            x0, x1 = scale.x(shown[i]), scale.x(shown[i + 1])
            tip = f"{fmt(shown[i])}\u2013{fmt(shown[i + 1])} {unit}: {n:,} rows"
            parts.append(_bar(x0 + 0.5, scale.y(n), max(x1 - x0 - 1, 0.8), scale.y(0), color, tip))
    for row, (name, value) in enumerate(marks.items()):
        if not shown[0] <= value <= shown[-1]:
            continue
        x, y = scale.x(value), 14 + row * 12
        anchor, dx = ("end", -3) if x > scale.width * 0.8 else ("start", 3)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y - 4}" y2="{scale.height - BOTTOM}" '
            f'stroke="{INK}" stroke-width="1" stroke-dasharray="3 3" opacity="0.75"/>'
            f'<text x="{x + dx:.1f}" y="{y + 1}" text-anchor="{anchor}" class="mark">'
            f"{escape(name)} {fmt(value)}</text>"
        )
    return scale.svg(parts, f"histogram in {unit}")


def line_chart(
    edges: Sequence[float],
    lines: Sequence[Line],
    *,
    y_label: str,
    reference: tuple[str, float] | None = None,
    width: int = W,
) -> str:
    """Series over a time axis (seconds in ``edges``), drawn as filled areas or lines.

    ``reference`` draws a dashed horizontal line (e.g. the configured concurrency).
    """
    divisor, unit = time_unit(edges[-1] - edges[0])
    top = max(
        [max(line.values, default=0.0) for line in lines] + [reference[1] if reference else 0]
    )
    scale = _Scale(edges[0] / divisor, edges[-1] / divisor, 0.0, max(top * 1.1, 1e-9), width=width)
    parts = scale.axes(x_label=f"{unit} since the run started", y_label=y_label)
    mids = [(a + b) / 2 / divisor for a, b in itertools.pairwise(edges)]
    for line in lines:
        points = " ".join(
            f"{scale.x(x):.1f},{scale.y(v):.1f}" for x, v in zip(mids, line.values, strict=True)
        )
        if line.fill and mids:
            base = (
                f"{scale.x(mids[-1]):.1f},{scale.y(0):.1f} {scale.x(mids[0]):.1f},{scale.y(0):.1f}"
            )
            parts.append(f'<polygon points="{points} {base}" fill="{line.color}" opacity="0.16"/>')
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{line.color}" stroke-width="1.8" '
            f'stroke-linejoin="round"><title>{escape(line.name)}</title></polyline>'
        )
    if reference is not None:
        y = scale.y(reference[1])
        parts.append(
            f'<line x1="{LEFT}" x2="{scale.width - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{MUTED}" stroke-dasharray="5 4"/><text x="{LEFT + 6}" y="{y - 5:.1f}" '
            f'class="mark">{escape(reference[0])}</text>'
        )
    if len(lines) > 1:
        parts.append(_legend([(line.name, line.color) for line in lines]))
    return scale.svg(parts, y_label)


def stacked_bar_chart(
    edges: Sequence[float], series: Mapping[str, Sequence[int]], *, y_label: str
) -> str:
    """Counts per time bin, stacked by series (e.g. failed attempts by error type)."""
    divisor, unit = time_unit(edges[-1] - edges[0])
    totals = [sum(values) for values in zip(*series.values(), strict=True)]
    scale = _Scale(edges[0] / divisor, edges[-1] / divisor, 0.0, max(max(totals) * 1.1, 1))
    parts = scale.axes(x_label=f"{unit} since the run started", y_label=y_label)
    colors = dict(zip(series, PALETTE[1:] + PALETTE[:1], strict=False))
    for i, total in enumerate(totals):
        if not total:
            continue
        x0, x1 = scale.x(edges[i] / divisor), scale.x(edges[i + 1] / divisor)
        below = 0
        for name, values in series.items():
            if values[i]:
                top = scale.y(below + values[i])
                tip = f"{name}: {values[i]:,}"
                bar_w = max(x1 - x0 - 1, 0.8)
                parts.append(_bar(x0 + 0.5, top, bar_w, scale.y(below), colors[name], tip))
                below += values[i]
    parts.append(_legend(list(colors.items())))
    return scale.svg(parts, y_label)


def hbar_chart(
    items: Mapping[str, int], *, color: str = PALETTE[0], total: int | None = None
) -> str:
    """One horizontal bar per label, longest first as given; shares of ``total`` when given."""
    if not items:
        return empty_chart("none")
    if len(items) > 12:  # the long tail of kinds as one bar
        ranked = sorted(items.items(), key=lambda kv: -kv[1])
        rest = ranked[11:]
        items = {**dict(ranked[:11]), f"{len(rest)} other kinds": sum(n for _, n in rest)}
    row, label_w, width = 26, 170, W
    height = row * len(items) + 10
    top = max(items.values())
    parts = []
    for i, (label, value) in enumerate(items.items()):
        y = 5 + i * row
        length = (width - label_w - 130) * value / top if top else 0
        share = f" ({100 * value / total:.1f}%)" if total else ""
        short = label if len(label) <= 26 else label[:25] + "…"
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end" class="label">'
            f"<title>{escape(label)}</title>{escape(short)}</text>"
            + _bar(
                label_w, y + 3, max(length, 1.5), y + row - 5, color, f"{label}: {value:,}{share}"
            )
            + f'<text x="{label_w + length + 6:.1f}" y="{y + 16}" class="value">'
            f"{value:,}{share}</text>"
        )
    return _wrap(parts, "bar chart", width, height)


def empty_chart(message: str) -> str:
    """A placeholder the size of a small chart, saying why there is nothing to draw."""
    return (
        f'<svg class="chart empty" viewBox="0 0 {W} 60" role="img" aria-label="{escape(message)}">'
        f'<text x="{W / 2}" y="34" text-anchor="middle" class="label">{escape(message)}</text>'
        "</svg>"
    )


class _Scale:
    """Maps data to the plot area inside the margins, and draws the axes and the frame."""

    def __init__(
        self, x0: float, x1: float, y0: float, y1: float, *, width: int = W, top: int = TOP
    ) -> None:
        self.x0, self.x1 = x0, (x1 if x1 > x0 else x0 + 1)
        self.y0, self.y1 = y0, (y1 if y1 > y0 else y0 + 1)
        self.width, self.height, self.top = width, H if width == W else H + 40, top

    def x(self, value: float) -> float:
        return LEFT + (value - self.x0) / (self.x1 - self.x0) * (self.width - LEFT - RIGHT)

    def y(self, value: float) -> float:
        bottom = self.height - BOTTOM
        return bottom - (value - self.y0) / (self.y1 - self.y0) * (bottom - self.top)

    def axes(self, *, x_label: str, y_label: str) -> list[str]:
        right, bottom, middle = (
            self.width - RIGHT,
            self.height - BOTTOM,
            (self.top + self.height - BOTTOM) / 2,
        )
        parts = []
        for tick in nice_ticks(self.y0, self.y1, 4):
            y = self.y(tick)
            parts.append(
                f'<line x1="{LEFT}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>'
                f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
                f"{fmt(tick)}</text>"
            )
        for tick in nice_ticks(self.x0, self.x1, max(3, self.width // 100)):
            x = self.x(tick)
            parts.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 4}" '
                f'stroke="{MUTED}"/><text x="{x:.1f}" y="{bottom + 16}" '
                f'text-anchor="middle" class="tick">{fmt(tick)}</text>'
            )
        parts.append(
            f'<line x1="{LEFT}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="{MUTED}"/>'
            f'<text x="{(LEFT + right) / 2}" y="{self.height - 5}" text-anchor="middle" '
            f'class="axis">{escape(x_label)}</text><text x="13" y="{middle}" '
            f'text-anchor="middle" class="axis" transform="rotate(-90 13 {middle})">'
            f"{escape(y_label)}</text>"
        )
        return parts

    def svg(self, parts: Sequence[str], label: str) -> str:
        return _wrap(parts, label, self.width, self.height)


def _bar(x: float, y_top: float, width: float, y_bottom: float, color: str, tip: str) -> str:
    return (
        f'<rect x="{x:.1f}" y="{y_top:.1f}" width="{width:.1f}" '
        f'height="{max(y_bottom - y_top, 0.5):.1f}" fill="{color}" rx="1">'
        f"<title>{escape(tip)}</title></rect>"
    )


def _legend(entries: Sequence[tuple[str, str]]) -> str:
    parts, x = [], LEFT
    for name, color in entries:
        parts.append(
            f'<rect x="{x}" y="8" width="10" height="10" fill="{color}" rx="2"/>'
            f'<text x="{x + 14}" y="17" class="label">{escape(name)}</text>'
        )
        x += 24 + 7 * len(name)
    return "".join(parts)


def _wrap(parts: Sequence[str], label: str, width: int, height: int) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" style="max-width:{width}px" '
        f'role="img" aria-label="{escape(label)}">{"".join(parts)}</svg>'
    )
