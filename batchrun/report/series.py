"""What the report's plots draw, aggregated in polars: histograms, time bins and top rows.

Every function here returns a bounded amount of data (tens of bins, tens of rows) whatever the
size of the run, so the page stays small for a million rows. Times on the x axis are seconds
since the run's first request was sent. Nothing here knows about SVG or HTML.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from batchrun.report.load import SENT

__all__ = [
    "Histogram",
    "Timeline",
    "attempts_in_flight",
    "failed_rows",
    "finish_rate",
    "histogram",
    "in_flight",
    "output_rate",
    "peak_level",
    "rate_limit_pauses",
    "seconds",
    "slowest_rows",
    "stacked_counts",
    "step_average",
    "timeline",
]

# Rows shown in the page's tables.
ROW_COLUMNS = [
    "variant",
    "id",
    "sample",
    "status",
    "stop_reason",
    "error_type",
    "attempts",
    "ttft_s",
    "e2e_s",
    "output_tokens",
    "trace_id",
    "request_id",
    "error_message",
]


@dataclass(frozen=True)
class Histogram:
    """Counts of values in equal bins from ``edges[0]`` to ``edges[-1]``.

    Values above the last edge (a far tail past the 99.9th percentile) are counted in the last
    bin; ``overflow`` says how many they are so the page can say so.
    """

    edges: list[float]
    counts: list[int]
    overflow: int


@dataclass(frozen=True)
class Timeline:
    """Equal bins over the run's wall time; ``edges`` in seconds since ``start``."""

    start: datetime
    edges: list[float]

    @property
    def width(self) -> float:
        return self.edges[1] - self.edges[0]


def histogram(values: pl.Series, *, bins: int | None = None) -> Histogram | None:
    """A histogram of the non-null values; about 1.5·√n bins (12 to 50) unless given.

    The range starts at 0, or near the minimum when every value is far from 0, and ends at the
    maximum, or at p99.9 when a long tail would squash the rest into a few bars.
    """
    present = values.drop_nulls()
    if present.is_empty():
        return None
    bins = bins or min(50, max(12, round(1.5 * present.len() ** 0.5)))
    smallest, largest = float(present.min()), float(present.max())  # type: ignore[arg-type]
    high = largest
    tail = float(present.quantile(0.999, "linear") or largest)
    if largest > 1.5 * tail > 0:
        high = tail
    low = 0.0 if smallest < 0.3 * high or smallest <= 0 else smallest - 0.05 * (high - smallest)
    low = min(low, smallest)
    if high <= low:
        high = low + max(abs(low) * 0.1, 1e-3)
    width = (high - low) / bins
    index = ((present - low) / width).floor().clip(0, bins - 1).cast(pl.Int64)
    found = dict(index.value_counts(name="n").iter_rows())
    return Histogram(
        edges=[low + width * i for i in range(bins + 1)],
        counts=[int(found.get(i, 0)) for i in range(bins)],
        overflow=int((present > high).sum()),
    )


def timeline(results: pl.DataFrame, *, bins: int = 120) -> Timeline | None:
    """Bins spanning first ``started_at`` to last ``finished_at``; None for a run of no time."""
    start, end = results["started_at"].min(), results["finished_at"].max()
    if not isinstance(start, datetime) or not isinstance(end, datetime):
        return None
    span = max((end - start).total_seconds(), 1e-3)
    return Timeline(start=start, edges=[span * i / bins for i in range(bins + 1)])


def seconds(column: str, line: Timeline) -> pl.Expr:
    """A timestamp column as seconds since the timeline's start."""
    return (pl.col(column) - pl.lit(line.start)).dt.total_microseconds() / 1e6


def step_average(events: pl.DataFrame, line: Timeline) -> list[float]:
    """Time-weighted mean, per bin, of a level that steps by ``d`` at each time ``t``.

    Used for requests in flight (+1 at start, -1 at finish) and for output tokens per second
    (+rate when a stream starts producing, -rate when it ends). The integral of the level is
    exact, so a burst shorter than a bin still counts in full.
    """
    if events.is_empty():
        return [0.0] * (len(line.edges) - 1)
    steps = (
        events.group_by("t")
        .agg(pl.col("d").sum())
        .sort("t")
        .with_columns(level=pl.col("d").cum_sum())
        .with_columns(area=(pl.col("level") * (pl.col("t").shift(-1) - pl.col("t"))).fill_null(0))
        .with_columns(before=pl.col("area").cum_sum().shift(1, fill_value=0.0))
    )
    edges = pl.DataFrame({"e": line.edges}, schema={"e": pl.Float64})
    at_edges = edges.join_asof(steps, left_on="e", right_on="t", strategy="backward")
    integral = at_edges.select(
        (pl.col("before") + pl.col("level") * (pl.col("e") - pl.col("t"))).fill_null(0.0)
    ).to_series()
    return [max(0.0, float(v) / line.width) for v in integral.diff().drop_nulls()]


def in_flight(results: pl.DataFrame, line: Timeline) -> list[float]:
    """Mean requests in flight per bin, from each row's ``started_at`` to its ``finished_at``."""
    rows = results.select("started_at", "finished_at").drop_nulls()
    events = pl.concat(
        [
            rows.select(t=seconds("started_at", line), d=pl.lit(1.0)),
            rows.select(t=seconds("finished_at", line), d=pl.lit(-1.0)),
        ]
    )
    return step_average(events, line)


def _intervals(frame: pl.DataFrame, line: Timeline, start: pl.Expr, end: pl.Expr) -> pl.DataFrame:
    """+1 at each start, -1 at each end (seconds since the timeline's start)."""
    spans = frame.select(s=start, e=end).drop_nulls()
    return pl.concat(
        [spans.select(t=pl.col("s"), d=pl.lit(1.0)), spans.select(t=pl.col("e"), d=pl.lit(-1.0))]
    )


def attempt_events(attempts: pl.DataFrame, line: Timeline) -> pl.DataFrame:
    """Steps of the attempts in flight: each attempt from its ``started_at`` to ``finished_at``.

    This is the concurrency the endpoint saw; backoff between attempts holds no stream open.
    """
    return _intervals(attempts, line, seconds("started_at", line), seconds("finished_at", line))


def attempts_in_flight(attempts: pl.DataFrame, line: Timeline) -> list[float]:
    """Mean attempts in flight per bin: the effective concurrency."""
    return step_average(attempt_events(attempts, line), line)


def peak_level(events: pl.DataFrame) -> int:
    """The highest level a +1/-1 step series reaches (ends before starts at the same time)."""
    if events.is_empty():
        return 0
    level = events.sort(["t", "d"]).select(pl.col("d").cum_sum().max()).item()
    return max(0, round(level or 0))


def rate_limit_pauses(attempts: pl.DataFrame) -> pl.DataFrame:
    """The attempts answered 429 (``rate_limit_error``), with the pause the server asked for."""
    return attempts.filter(
        (pl.col("outcome") == "rate_limit_error") | (pl.col("http_status") == 429)
    ).select("finished_at", pause_s=pl.col("retry_after_s").fill_null(0.0))


def pauses_in_progress(attempts: pl.DataFrame, line: Timeline) -> list[float]:
    """Mean 429 pauses going on per bin: from a 429's arrival for its ``retry-after``."""
    pauses = rate_limit_pauses(attempts)
    start = seconds("finished_at", line)
    return step_average(_intervals(pauses, line, start, start + pl.col("pause_s")), line)


def finish_rate(results: pl.DataFrame, line: Timeline) -> dict[str, list[float]]:
    """Rows finished per second in each bin, by status (``ok``, ``error``)."""
    counts = stacked_counts(results, "finished_at", "status", line)
    return {
        status: [n / line.width for n in counts.get(status, [0] * (len(line.edges) - 1))]
        for status in ("ok", "error")
    }


def output_rate(results: pl.DataFrame, line: Timeline) -> list[float]:
    """Output tokens per second per bin, each stream's tokens spread over its generation time.

    A stream generates from its first content delta (``finished_at - e2e_s + ttft_s``, on the
    successful attempt) to ``finished_at``; windows under a millisecond count as one. A response
    cache hit generated nothing in this run: it is left out.
    """
    streams = (
        results.select("output_tokens", "finished_at", "e2e_s", "ttft_s", "cache_hit")
        .filter((pl.col("output_tokens") > 0) & SENT)
        .drop_nulls(["finished_at", "e2e_s", "ttft_s"])
        .select(
            end=seconds("finished_at", line),
            length=(pl.col("e2e_s") - pl.col("ttft_s")).clip(lower_bound=1e-3),
            tokens=pl.col("output_tokens").cast(pl.Float64),
        )
        .with_columns(
            start=pl.col("end") - pl.col("length"), rate=pl.col("tokens") / pl.col("length")
        )
    )
    events = pl.concat(
        [
            streams.select(t=pl.col("start"), d=pl.col("rate")),
            streams.select(t=pl.col("end"), d=-pl.col("rate")),
        ]
    )
    return step_average(events, line)


def stacked_counts(
    frame: pl.DataFrame, time_column: str, key: str, line: Timeline, *, top: int = 5
) -> dict[str, list[int]]:
    """Rows per bin of ``time_column``, one series per value of ``key`` (the rest as other)."""
    rows = frame.select(time_column, key).drop_nulls()
    if rows.is_empty():
        return {}
    order = rows[key].value_counts().sort(["count", key], descending=[True, False])[key].to_list()
    keep = set(order[:top]) if len(order) > top + 1 else set(order)
    bins = len(line.edges) - 1
    binned = (
        rows.select(
            key=pl.when(pl.col(key).is_in(list(keep))).then(pl.col(key)).otherwise(pl.lit("other")),
            bin=(seconds(time_column, line) / line.width).floor().clip(0, bins - 1).cast(pl.Int64),
        )
        .group_by("key", "bin")
        .len()
    )
    series: dict[str, list[int]] = {name: [0] * bins for name in [*order[:top], "other"]}
    for name, index, n in binned.iter_rows():
        series[name][index] = int(n)
    return {name: values for name, values in series.items() if any(values)}


def slowest_rows(results: pl.DataFrame, n: int) -> list[dict[str, Any]]:
    """The ``n`` ok rows sent (not response cache hits) with the longest end-to-end latency,
    slowest first."""
    rows = (
        results.lazy()
        .filter((pl.col("status") == "ok") & SENT)
        .select(ROW_COLUMNS)
        .drop_nulls("e2e_s")
    )
    return rows.top_k(n, by="e2e_s").sort("e2e_s", descending=True).collect().to_dicts()


def failed_rows(results: pl.DataFrame, n: int) -> list[dict[str, Any]]:
    """The first ``n`` rows that ended in error, in the order they finished."""
    rows = results.lazy().select(*ROW_COLUMNS, "finished_at").filter(pl.col("status") == "error")
    first = rows.sort("finished_at", nulls_last=True).head(n)  # sorts a projection only
    return first.select(ROW_COLUMNS).collect().to_dicts()
