"""``batchrun report RUN --by COLUMN``: the summary broken down by an input column.

Results do not copy input columns, so the input files the job names are scanned for two columns,
the key and ``COLUMN`` (``inputs.py``), and joined to the results: on ``id`` through
``input.id_column``; without an id column on ``input_row`` (the row's position across the files)
when the results have it, else on the id, which is then that position. Rows of no group (an
input changed since the run) fall in ``(not in input)``. With several variants each value is
broken down per variant as well. Latencies are of the rows sent (response cache hits left out).
Plain data; a missing input or column is a ``JobError`` naming both.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from batchrun.report.inputs import NOT_IN_INPUT, input_column
from batchrun.report.load import SENT, RunData
from batchrun.report.summary import PERCENTILES

__all__ = ["MAX_GROUPS", "breakdown"]

MAX_GROUPS = 200  # groups listed; the rest are counted in ``groups_left_off``
_GROUP = "__group"


def breakdown(run: RunData, column: str) -> dict[str, Any]:
    """Per value of ``column``: rows, ok share, tokens, latency percentiles and cost; and with
    several variants, the same per variant under ``variants`` in each group."""
    inputs, has_id = input_column(run, column)
    results = run.results
    on = "id"
    if not has_id and "input_row" in results.columns:
        on = "input_row" if results["input_row"].null_count() < results.height else "id"
    joined = (
        results.lazy()
        .join(
            inputs.select(
                pl.col(on).cast(results.schema[on]), pl.col("value").alias(_GROUP)
            ).unique(on, keep="first"),
            on=on,
            how="left",
        )
        .with_columns(pl.col(_GROUP).fill_null(NOT_IN_INPUT))
    )
    priced = "cost_usd" in results.columns
    groups = _aggregate(joined, [_GROUP], priced).collect(engine="streaming")
    groups = groups.sort(["rows", _GROUP], descending=[True, False])
    listed = _shares(groups.head(MAX_GROUPS).rename({_GROUP: "value"}).to_dicts())
    variants = run.variants
    if len(variants) > 1:  # each value's rows per variant too, in the job's order
        order = pl.DataFrame({"variant": variants, "_order": range(len(variants))})
        split = (
            _aggregate(joined, [_GROUP, "variant"], priced)
            .join(order.lazy(), on="variant", how="left")
            .sort("_order")
            .drop("_order")
            .collect(engine="streaming")
        )
        per_value: dict[str, list[dict[str, Any]]] = {}
        for row in _shares(split.to_dicts()):
            per_value.setdefault(row.pop(_GROUP), []).append(row)
        for group in listed:
            group["variants"] = per_value[group["value"]]
    return {
        "column": column,
        "joined_on": on,
        "groups": listed,
        "groups_left_off": max(0, groups.height - MAX_GROUPS),
    }


def _shares(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for group in groups:
        group["ok_share"] = group["ok"] / group["rows"] if group["rows"] else None
    return groups


def _aggregate(joined: pl.LazyFrame, keys: list[str], priced: bool) -> pl.LazyFrame:
    def tokens(name: str) -> pl.Expr:
        col = pl.col(name)
        return pl.when(col.count() > 0).then(col.sum()).otherwise(None).alias(name)

    latency = [
        pl.col(name).filter(SENT).quantile(q, "linear").alias(f"{name}_p{round(q * 100)}")
        for name in ("ttft_s", "e2e_s")
        for q in PERCENTILES
    ]
    cost = [tokens("cost_usd").alias("cost_usd")] if priced else []
    return joined.group_by(keys).agg(
        pl.len().alias("rows"),
        (pl.col("status") == "ok").sum().alias("ok"),
        (pl.col("status") == "error").sum().alias("error"),
        tokens("input_tokens"),
        tokens("output_tokens"),
        *latency,
        *cost,
    )
