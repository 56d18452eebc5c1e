"""``batchrun report RUN --by COLUMN``: the summary broken down by an input column.

Results do not copy input columns, so the input files the job names (run.json's resolved job:
``input.path`` relative to ``job_file``'s folder) are scanned for two columns, the key and
``COLUMN``, and joined to the results: on ``id`` through ``input.id_column``; without an id
column on ``input_row`` (the row's position across the files) when the results have it, else on
the id, which is then that position. Rows of no group (an input changed since the run) fall in
``(not in input)``. With several variants each value is broken down per variant as well.
Latencies are of the rows sent (response cache hits left out). Plain data; a missing input or
column is a ``JobError`` naming both.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import polars as pl

from batchrun.errors import JobError
from batchrun.report.load import SENT, RunData
from batchrun.report.summary import PERCENTILES

__all__ = ["MAX_GROUPS", "breakdown"]

MAX_GROUPS = 200  # groups listed; the rest are counted in ``groups_left_off``
_KEY, _GROUP = "__key", "__group"
_NULL, _MISSING = "(null)", "(not in input)"


def breakdown(run: RunData, column: str) -> dict[str, Any]:
    """Per value of ``column``: rows, ok share, tokens, latency percentiles and cost; and with
    several variants, the same per variant under ``variants`` in each group."""
    files, shown, id_column = _inputs(run, column)
    scans = [_scan(path) for path in files]
    for path, scan in zip(files, scans, strict=True):
        names = scan.collect_schema().names()
        if column not in names:
            raise JobError(
                f"report --by {column}: the input {_relative(path, shown)} has no column "
                f"{column!r} (its columns: {', '.join(names)}); the run is {run.run_dir}"
            )
    results = run.results
    if id_column is not None:
        key = pl.col(id_column).cast(pl.String)
        on = "id"
    elif "input_row" in results.columns and results["input_row"].null_count() < results.height:
        key, on = pl.col(_KEY), "input_row"
    else:
        key, on = pl.col(_KEY).cast(pl.String), "id"
    frames = []
    for scan in scans:
        columns = [column] + ([id_column] if id_column is not None else [])
        frames.append(scan.select(columns).with_columns(pl.col(column).cast(pl.String)))
    inputs = (
        pl.concat(frames, how="vertical")
        .with_row_index(_KEY)
        .select(
            key.cast(results.schema[on]).alias(on), pl.col(column).fill_null(_NULL).alias(_GROUP)
        )
    )
    joined = (
        results.lazy()
        .join(inputs.unique(on, keep="first"), on=on, how="left")
        .with_columns(pl.col(_GROUP).fill_null(_MISSING))
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


def _inputs(run: RunData, column: str) -> tuple[list[Path], Path, str | None]:
    """The input files, the folder paths are shown relative to, and the id column."""
    job = run.job
    source = job.get("input")
    source = source if isinstance(source, dict) else {}
    pattern = source.get("path")
    if not isinstance(pattern, str):
        raise JobError(
            f"report --by {column}: {run.run_dir / 'run.json'} names no input files "
            "(no run.json, or one without the job's input.path), so there is nothing to join"
        )
    job_file = job.get("job_file")
    base = Path(job_file).parent if isinstance(job_file, str) else run.run_dir
    literal = base / Path(pattern).expanduser()
    if literal.is_file():
        files = [literal]
    else:
        found = glob.glob(str(Path(pattern).expanduser()), root_dir=base, recursive=True)
        files = sorted(p for p in (base / f for f in found) if p.is_file())
    if not files:
        raise JobError(
            f"report --by {column}: the run's input {pattern} is not there any more "
            f"(looked in {base}, the job file's folder); the run is {run.run_dir}"
        )
    id_column = source.get("id_column")
    return files, base, id_column if isinstance(id_column, str) else None


def _scan(path: Path) -> pl.LazyFrame:
    if path.suffix.lower() == ".csv":
        return pl.scan_csv(path, infer_schema=False, glob=False)
    return pl.scan_parquet(path, glob=False)


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)
