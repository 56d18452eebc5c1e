"""How the run went over time, as summary data: its outcome, the rows it covered, the effective
concurrency against the configured one, 429 pauses, and rows finished per second.

The outcome is what the badge and the first line say: green only when the run finished and every
row is ok, amber when it finished with some errors (or its end is unknown), red when no row is
ok or the run did not finish. Plain data from ``RunData``; nothing printed or written.
"""

from __future__ import annotations

from typing import Any

import batchrun.report.series as series
from batchrun.report.load import RunData

__all__ = [
    "OVER_TIME_BINS",
    "concurrency",
    "configured_concurrency",
    "input_rows",
    "outcome",
    "over_time",
    "shard_count",
    "state_line",
]

OVER_TIME_BINS = 40  # bins of the ``over_time`` series in the summary (the page draws more)
_UNFINISHED = {
    "partial",
    "interrupted",
    "aborted",
    "write_failed",
    "unreachable",
    "canceled",
    "cancel_requested",
}


def outcome(state: str, ok: int, error: int) -> dict[str, Any]:
    """``level`` (ok | warn | bad), the share of ok rows, and the words for it."""
    rows = ok + error
    share = ok / rows if rows else None
    if state in _UNFINISHED or ok == 0:
        level = "bad"
    elif error or state != "complete":
        level = "warn"
    else:
        level = "ok"
    if rows == 0:
        words = "no rows"
    elif ok == 0:
        words = f"every row failed ({error:,})"
    elif error == 0:
        words = f"all {rows:,} rows ok"
    else:
        words = f"{ok:,} of {rows:,} rows ok ({100 * ok / rows:.1f}%), {error:,} failed"
    return {"level": level, "ok_share": share, "text": words}


def input_rows(run: RunData) -> dict[str, Any]:
    """The rows the run covered: of how many in the input, and whether ``--limit`` cut it."""
    manifest = run.manifest
    options = manifest.get("options")
    limit = options.get("limit") if isinstance(options, dict) else None
    run_rows, total = manifest.get("input_rows"), manifest.get("input_rows_total")
    limited = manifest.get("limited")
    if not isinstance(limited, bool):
        limited = isinstance(limit, int) or (
            isinstance(total, int) and isinstance(run_rows, int) and run_rows < total
        )
    return {
        "rows": run_rows if isinstance(run_rows, int) else None,
        "rows_total": total if isinstance(total, int) else None,
        "limit": limit if isinstance(limit, int) else None,
        "limited": limited,
    }


def state_line(state: str, rows: dict[str, Any]) -> str:
    """``complete``, or ``complete: 100 of 3,000 rows (--limit)`` for a limited run."""
    if not rows["limited"]:
        return state
    if rows["rows"] is not None and rows["rows_total"] is not None:
        return f"{state}: {rows['rows']:,} of {rows['rows_total']:,} rows (--limit)"
    if rows["limit"] is not None:
        return f"{state}: first {rows['limit']:,} rows (--limit)"
    return f"{state} (--limit)"


def configured_concurrency(run: RunData) -> int | None:
    """``limits.concurrency`` of the job as run.json holds it: of each shard, for a sharded
    run (see :func:`shard_count`)."""
    limits = run.job.get("limits")
    value = limits.get("concurrency") if isinstance(limits, dict) else None
    return value if isinstance(value, int) else None


def shard_count(run: RunData) -> int:
    """How many processes ran the rows: the shards of a merged or unmerged sharded run
    (``shards`` in its run.json), else 1. Each had ``limits.concurrency`` streams."""
    shards = run.manifest.get("shards")
    return len(shards) if isinstance(shards, list) and shards else 1


def concurrency(run: RunData, duration_s: float) -> dict[str, Any]:
    """Attempts in flight (the effective concurrency): mean over the active time and peak,
    against the configured limit; and the 429 answers with the pause each asked for."""
    attempts = run.attempts.select("started_at", "finished_at").drop_nulls()
    spans = (attempts["finished_at"] - attempts["started_at"]).dt.total_microseconds()
    busy = float(spans.sum()) / 1e6
    line = series.timeline(run.results)
    peak = series.peak_level(series.attempt_events(attempts, line)) if line else 0
    pauses = series.rate_limit_pauses(run.attempts)
    per, shards = configured_concurrency(run), shard_count(run)
    return {
        "configured": None if per is None else per * shards,  # the run's ceiling
        "shards": shards,
        "mean": busy / duration_s if duration_s > 0 else None,
        "peak": peak,
        "rate_limited": pauses.height,
        "pause_s": float(pauses["pause_s"].sum()),
    }


def over_time(run: RunData, bins: int = OVER_TIME_BINS) -> dict[str, Any] | None:
    """Per equal bin of the run's wall time: ok and error rows finished per second, and the
    mean attempts in flight. None for a run of no time."""
    line = series.timeline(run.results, bins=bins)
    if line is None:
        return None
    rates = series.finish_rate(run.results, line)
    flight = series.attempts_in_flight(run.attempts, line)
    return {
        "bin_s": line.width,
        "ok_per_s": _rounded(rates["ok"]),
        "error_per_s": _rounded(rates["error"]),
        "in_flight": _rounded(flight),
    }


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 4) for v in values]
