"""The HTML report: one self-contained page of a run's summary, plots and notable rows.

Inline CSS and inline SVG only: no script, no font, no image and no link to anything outside the
file, so it opens offline and is safe to mail. Plot data is aggregated first (``series``), so the
page is a few hundred kilobytes whatever the size of the run. This module renders and writes
``report.html``; it computes no statistics of its own beyond what ``series`` hands it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import batchrun.report.series as series
import batchrun.report.svg as svg
from batchrun import __version__
from batchrun.models import RunStatus
from batchrun.record.files import commit, write_temp
from batchrun.report.load import RunData
from batchrun.report.page import CSS, cards, facts, row_table

__all__ = ["render_html", "write_html"]


def write_html(run: RunData, summary: Mapping[str, Any], *, rows: int = 20) -> Path:
    """Write ``report.html`` into the run folder (atomically) and return its path."""
    path = run.run_dir / "report.html"
    page = render_html(run, summary, rows=rows).encode()
    commit(write_temp(path.parent, path.name, lambda fh: fh.write(page)), path)  # no link followed
    return path


def render_html(run: RunData, summary: Mapping[str, Any], *, rows: int = 20) -> str:
    """The page as text."""
    results = run.results
    failed = summary["status"]["error"]
    sections = [
        _header(run, summary),
        cards(summary),
        _grid(
            _panel("Time to first token", _histogram(results["ttft_s"], summary["ttft_s"])),
            _panel("End-to-end latency", _histogram(results["e2e_s"], summary["e2e_s"])),
        ),
        *_timelines(run),
        _grid(
            _panel("Stop reasons", svg.hbar_chart(summary["stop_reasons"], total=summary["rows"])),
            _panel(
                "Errors by type",
                "<h3>rows that ended in error</h3>"
                + svg.hbar_chart(summary["errors"], color=svg.PALETTE[2], total=summary["rows"])
                + "<h3>failed attempts (each retried or ending its row)</h3>"
                + svg.hbar_chart(summary["failed_attempts"], color=svg.PALETTE[1]),
            ),
        ),
        _panel("Per-request timings and totals", facts(summary), wide=True),
        _panel(
            f"Slowest {min(rows, summary['e2e_s']['count'])} rows (end-to-end)",
            row_table(series.slowest_rows(results, rows)),
            wide=True,
        ),
        _panel(
            f"Failed rows ({failed:,})" + (f", first {rows}" if failed > rows else ""),
            row_table(series.failed_rows(results, rows)) if failed else "<p>None.</p>",
            wide=True,
        ),
    ]
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>batchrun report · {escape(run.name)}</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(sections)}<footer>batchrun {escape(__version__)} · generated "
        f"{generated} · this page is self-contained: no scripts, no network</footer>"
        "</main></body></html>\n"
    )


def _header(run: RunData, summary: Mapping[str, Any]) -> str:
    state = summary["state"]
    meta = [
        " · ".join(summary["models"]) or "model unknown",
        " · ".join(f"{api} API" for api in summary["apis"]),
        _span(summary["first_started_at"], summary["last_finished_at"]),
        f"run {', '.join(summary['run_ids'])}",
    ]
    banner = ""
    if state == "partial":
        banner = (
            '<p class="banner">Partial run: these are the rows finished so far, read from its '
            "checkpoints. The numbers will change as it goes on (or when it is resumed).</p>"
        )
    elif state != RunStatus.COMPLETE:
        message = run.manifest.get("message") or ""
        banner = f'<p class="banner">The run was {escape(state)}. {escape(str(message))}</p>'
    return (
        f'<header><h1>{escape(run.name)} <span class="badge {escape(state)}">{escape(state)}'
        f'</span></h1><p class="meta">{" &nbsp;·&nbsp; ".join(escape(m) for m in meta if m)}</p>'
        f'<p class="meta path">{escape(str(run.run_dir.resolve()))}</p>{banner}</header>'
    )


def _span(first: str | None, last: str | None) -> str:
    if not first or not last:
        return ""
    return f"{first[:19].replace('T', ' ')} → {last[:19].replace('T', ' ')} UTC"


def _histogram(values: Any, stats: Mapping[str, Any]) -> str:
    hist = series.histogram(values)
    if hist is None:
        return svg.empty_chart("no successful rows to time")
    ms = hist.edges[-1] < 2
    chart = svg.histogram_chart(
        hist.edges,
        hist.counts,
        unit="milliseconds" if ms else "seconds",
        scale_by=1000.0 if ms else 1.0,
        markers={"p50": stats["p50"], "p90": stats["p90"], "p99": stats["p99"]},
    )
    if hist.overflow:
        rows = "1 row" if hist.overflow == 1 else f"{hist.overflow:,} rows"
        chart += (
            f'<p class="note">The last bar also counts the {rows} above '
            f"{svg.fmt(hist.edges[-1])} s; the slowest took {svg.fmt(stats['max'])} s.</p>"
        )
    return chart


def _timelines(run: RunData) -> Sequence[str]:
    line = series.timeline(run.results)
    if line is None:
        return [_panel("Over the run", svg.empty_chart("no timestamps to plot"), wide=True)]
    rate = series.output_rate(run.results, line)
    throughput = (
        svg.line_chart(
            line.edges,
            [svg.Line("output tokens/s", rate, svg.PALETTE[0])],
            y_label="output tokens/s",
            width=svg.WIDE,
        )
        if any(rate)
        else svg.empty_chart("no output token counts (the legacy complete API reports none)")
    )
    limit = run.manifest.get("job", {}).get("limits", {}).get("concurrency")
    reference = (f"concurrency limit {limit}", float(limit)) if isinstance(limit, int) else None
    flight = svg.line_chart(
        line.edges,
        [svg.Line("requests in flight", series.in_flight(run.results, line), svg.PALETTE[3])],
        y_label="requests in flight",
        reference=reference,
    )
    failures = run.attempts.filter(run.attempts["outcome"] != "ok")
    coarse = series.timeline(run.results, bins=60) or line
    stacked = series.stacked_counts(failures, "finished_at", "outcome", coarse)
    retries = (
        svg.stacked_bar_chart(coarse.edges, stacked, y_label="failed attempts")
        if stacked
        else svg.empty_chart("no failed attempts: nothing was retried")
    )
    return [
        _panel("Output tokens per second over the run", throughput, wide=True),
        _grid(
            _panel("Concurrency: requests in flight (mean per bin)", flight),
            _panel("Retries: failed attempts over time, by error", retries),
        ),
    ]


def _panel(title: str, body: str, *, wide: bool = False) -> str:
    return (
        f'<section class="panel{" wide" if wide else ""}"><h2>{escape(title)}</h2>{body}</section>'
    )


def _grid(*panels: str) -> str:
    return f'<div class="grid">{"".join(panels)}</div>'
