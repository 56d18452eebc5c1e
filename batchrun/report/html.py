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
from batchrun.report.completions import output_lengths
from batchrun.report.load import RunData
from batchrun.report.page import (
    CSS,
    cards,
    completion_table,
    facts,
    grid,
    panel,
    row_table,
)
from batchrun.report.sections import html_sections
from batchrun.report.text import tokens_note

__all__ = [
    "document",
    "finish_rate_chart",
    "header",
    "latency_chart",
    "lengths_chart",
    "render_html",
    "write_html",
    "write_page",
]


def write_html(run: RunData, summary: Mapping[str, Any], *, rows: int = 20) -> Path:
    """Write ``report.html`` into the run folder (atomically) and return its path."""
    return write_page(run.run_dir / "report.html", render_html(run, summary, rows=rows))


def write_page(path: Path, page: str) -> Path:
    """Write ``page`` at ``path`` atomically (no link followed) and return the path."""
    data = page.encode()
    commit(write_temp(path.parent, path.name, lambda fh: fh.write(data)), path)
    return path


def render_html(run: RunData, summary: Mapping[str, Any], *, rows: int = 20) -> str:
    """The page as text."""
    results = run.results
    failed = summary["status"]["error"]
    variant = len(run.variants) > 1  # name each row's variant beside its id
    sections = [
        header(run, summary),
        cards(summary),
        *html_sections(summary),
        grid(
            panel("Time to first token", latency_chart(run, "ttft_s", summary["ttft_s"])),
            panel("End-to-end latency", latency_chart(run, "e2e_s", summary["e2e_s"])),
        ),
        *_timelines(run, summary),
        grid(
            panel("Output length of ok rows", lengths_chart(run, summary)),
            panel("Rows finished per second", finish_rate_chart(run)),
        ),
        grid(
            panel("Stop reasons", svg.hbar_chart(summary["stop_reasons"], total=summary["rows"])),
            panel(
                "Errors by type",
                "<h3>rows that ended in error</h3>"
                + svg.hbar_chart(summary["errors"], color=svg.PALETTE[2], total=summary["rows"])
                + "<h3>failed attempts (each retried or ending its row)</h3>"
                + svg.hbar_chart(summary["failed_attempts"], color=svg.PALETTE[1]),
            ),
        ),
        panel("Per-request timings and totals", facts(summary), wide=True),
        panel(
            "Completions: the slowest, the failed and a few at random",
            _picks(summary, variant=variant),
            wide=True,
        ),
        panel(
            f"Slowest {min(rows, summary['e2e_s']['count'])} rows (end-to-end)",
            row_table(series.slowest_rows(results, rows), variant=variant),
            wide=True,
        ),
        panel(
            f"Failed rows ({failed:,})" + (f", first {rows}" if failed > rows else ""),
            row_table(series.failed_rows(results, rows), variant=variant)
            if failed
            else "<p>None.</p>",
            wide=True,
        ),
    ]
    return document(f"batchrun report · {run.name}", sections)


def document(title: str, sections: Sequence[str]) -> str:
    """A whole self-contained page around ``sections``."""
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(sections)}<footer>batchrun {escape(__version__)} · generated "
        f"{generated} · this page is self-contained: no scripts, no network</footer>"
        "</main></body></html>\n"
    )


def lengths_chart(run: RunData, summary: Mapping[str, Any]) -> str:
    unit, values = output_lengths(run)
    hist = series.histogram(values.cast(float))
    if hist is None:
        return svg.empty_chart("no ok rows: no outputs to measure")
    stats = summary["output_length"]
    markers = {"p50": stats["p50"], "p90": stats["p90"], "p99": stats["p99"]}
    chart = svg.histogram_chart(hist.edges, hist.counts, unit=f"output {unit}", markers=markers)
    if unit == "characters":
        chart += '<p class="note">Characters of the completion: the API counted no tokens.</p>'
    return chart


def finish_rate_chart(run: RunData) -> str:
    line = series.timeline(run.results, bins=60)
    if line is None:
        return svg.empty_chart("no timestamps to plot")
    rates = series.finish_rate(run.results, line)
    lines = [svg.Line("ok rows/s", rates["ok"], svg.PALETTE[4])]
    if any(rates["error"]):
        lines.append(svg.Line("error rows/s", rates["error"], svg.PALETTE[2], fill=False))
    return svg.line_chart(line.edges, lines, y_label="rows finished per second")


def _picks(summary: Mapping[str, Any], *, variant: bool) -> str:
    picked = summary["completions"]
    names = {
        "slowest": "slowest ok rows",
        "failed": "failed rows, with their error",
        "random": "random rows (the same picks on every report of this folder)",
    }
    return "".join(
        f"<h3>{escape(names.get(kind, kind))}</h3>{completion_table(rows, variant=variant)}"
        for kind, rows in picked.items()
    )


def header(run: RunData, summary: Mapping[str, Any]) -> str:
    state, outcome = summary["state"], summary["outcome"]
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
    badge = f"{summary['state_line']} · {outcome['text']}"
    return (
        f'<header><h1>{escape(run.name)} <span class="badge {escape(outcome["level"])}" '
        f'title="{escape(state)}">{escape(badge)}</span></h1>'
        f'<p class="meta">{" &nbsp;·&nbsp; ".join(escape(m) for m in meta if m)}</p>'
        f'<p class="meta path">{escape(str(run.run_dir.resolve()))}</p>{banner}</header>'
    )


def _span(first: str | None, last: str | None) -> str:
    if not first or not last:
        return ""
    return f"{first[:19].replace('T', ' ')} → {last[:19].replace('T', ' ')} UTC"


def latency_chart(run: RunData, column: str, stats: Mapping[str, Any]) -> str:
    """The distribution of a timing over the rows sent (response cache hits left out)."""
    hist = series.histogram(run.results[column].filter(~run.results["cache_hit"]))
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


def _timelines(run: RunData, summary: Mapping[str, Any]) -> Sequence[str]:
    line = series.timeline(run.results)
    if line is None:
        return [panel("Over the run", svg.empty_chart("no timestamps to plot"), wide=True)]
    rate = series.output_rate(run.results, line)
    throughput = (
        svg.line_chart(
            line.edges,
            [svg.Line("output tokens/s", rate, svg.PALETTE[0])],
            y_label="output tokens/s",
            width=svg.WIDE,
        )
        if any(rate)
        else svg.empty_chart(f"no output token counts ({_no_tokens(summary)})")
    )
    c = summary["concurrency"]
    limit, shards = c["configured"], c.get("shards") or 1
    each = (
        f"{limit // shards} in each of {shards} shards"
        if limit is not None and shards > 1
        else limit
    )
    reference = (f"limits.concurrency {each}", float(limit)) if limit is not None else None
    flows = [
        svg.Line(
            "attempts in flight", series.attempts_in_flight(run.attempts, line), svg.PALETTE[3]
        )
    ]
    if summary["concurrency"]["rate_limited"]:
        pauses = series.pauses_in_progress(run.attempts, line)
        flows.append(svg.Line("429 pauses going on", pauses, svg.PALETTE[2], fill=False))
    flight = svg.line_chart(line.edges, flows, y_label="attempts in flight", reference=reference)
    failures = run.attempts.filter(run.attempts["outcome"] != "ok")
    coarse = series.timeline(run.results, bins=60) or line
    stacked = series.stacked_counts(failures, "finished_at", "outcome", coarse)
    retries = (
        svg.stacked_bar_chart(coarse.edges, stacked, y_label="failed attempts")
        if stacked
        else svg.empty_chart("no failed attempts: nothing was retried")
    )
    return [
        panel("Output tokens per second over the run", throughput, wide=True),
        grid(
            panel("Effective concurrency: attempts in flight (mean per bin)", flight),
            panel("Retries: failed attempts over time, by error", retries),
        ),
    ]


def _no_tokens(summary: Mapping[str, Any]) -> str:
    note = tokens_note(summary)
    if note is None:  # tokens were counted, but no stream produced any
        return "no row produced output"
    return note.removeprefix("none: ")
