"""Variants side by side: per variant, its rows, ok share, tokens, cost, latency percentiles and
response cache hits, as plain data.

A job with ``variants`` runs every input row under each of them, so a run folder holds a
comparison; this is what ``batchrun report`` shows of it, one entry per variant in the job's
order, and what ``batchrun report A B`` compares variant by variant. Latency statistics are of
the rows sent, as in the summary (a cache hit's timings are another run's). Computed in one
``group_by`` over the narrow columns, so no frame is copied per variant. Plain data; nothing
printed or written.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from batchrun.report.load import SENT, RunData
from batchrun.report.summary import PERCENTILES

__all__ = ["TIMINGS", "TOKENS", "per_variant", "variant_stats"]

# Latencies compared, summary key → results column (as the summary's ``TIMINGS``).
TIMINGS = {
    "ttft_s": "ttft_s",
    "ttft_text_s": "ttft_text_s",
    "e2e_s": "e2e_s",
    "stream_output_tokens_per_s": "output_tokens_per_s",
}
# Token sums, key → results column; null for a variant whose rows counted none.
TOKENS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_read": "cache_read_input_tokens",
    "cache_creation": "cache_creation_input_tokens",
}
_STATS = ("count", "mean", *(f"p{round(q * 100)}" for q in PERCENTILES), "max")


def per_variant(run: RunData) -> list[dict[str, Any]] | None:
    """:func:`variant_stats` of a run of several variants; None for a run of one: there is
    nothing to compare."""
    return variant_stats(run) if len(run.variants) > 1 else None


def variant_stats(run: RunData) -> list[dict[str, Any]]:
    """One entry per variant, in the job's order: ``variant``, ``models``, ``rows``, ``ok``,
    ``error``, ``ok_share``, ``cache_hits``, ``tokens``, ``cost_usd`` (the rows' own, summed;
    null when no row has one) and a ``{count, mean, p50, p90, p99, max}`` for each of
    :data:`TIMINGS`. The comparison of two runs takes it of a run of one variant too."""
    names = run.variants
    results = run.results
    have = set(results.columns)
    # a frame built by hand may lack a column of a later release: read it as nulls
    missing = [c for c in (*TOKENS.values(), *TIMINGS.values(), "cost_usd") if c not in have]
    frame = results.lazy().with_columns(pl.lit(None, dtype=pl.Float64).alias(c) for c in missing)
    table = (
        frame.group_by("variant")
        .agg(
            pl.col("model").drop_nulls().unique().sort().alias("models"),
            pl.len().alias("rows"),
            (pl.col("status") == "ok").sum().alias("ok"),
            (pl.col("status") == "error").sum().alias("error"),
            pl.col("cache_hit").sum().alias("cache_hits"),
            *(_total(column).alias(f"tokens.{key}") for key, column in TOKENS.items()),
            _total("cost_usd").cast(pl.Float64).alias("cost_usd"),
            *(
                expr.alias(f"{key}.{stat}")
                for key, column in TIMINGS.items()
                for stat, expr in _stats(column).items()
            ),
        )
        .collect()
    )
    found = {row["variant"]: row for row in table.iter_rows(named=True)}
    return [_entry(found[name]) for name in names]


def _total(column: str) -> pl.Expr:
    """The sum of the values, or null when there are none (not 0: nothing was counted)."""
    col = pl.col(column)
    return pl.when(col.count() > 0).then(col.sum()).otherwise(None)


def _stats(column: str) -> dict[str, pl.Expr]:
    """The summary's ``distribution`` as expressions, over the rows sent that have a value."""
    value = pl.col(column).cast(pl.Float64)
    timed = value.filter(SENT & value.is_not_null() & value.is_not_nan())
    stats = {"count": timed.len(), "mean": timed.mean()}
    for q in PERCENTILES:
        stats[f"p{round(q * 100)}"] = timed.quantile(q, "linear")
    stats["max"] = timed.max()
    return stats


def _entry(row: dict[str, Any]) -> dict[str, Any]:
    rows, ok = row["rows"], row["ok"]
    entry: dict[str, Any] = {
        "variant": row["variant"],
        "models": row["models"],
        "rows": rows,
        "ok": ok,
        "error": row["error"],
        "ok_share": ok / rows if rows else None,
        "cache_hits": row["cache_hits"],
        "tokens": {key: row[f"tokens.{key}"] for key in TOKENS},
        "cost_usd": row["cost_usd"],
    }
    for key in TIMINGS:
        stats = {stat: row[f"{key}.{stat}"] for stat in _STATS}
        entry[key] = {**stats, "count": int(stats["count"] or 0)}
    return entry
