"""Two runs side by side: their summaries with deltas, and the rows whose completion changed.

Rows are matched on (``variant``, ``id``, ``sample``); a folder written before variants holds
variant ``default``. Completions are compared by their hash, in a streaming
scan, so neither run's text is held in memory; only the changed rows shown are read whole (cut
to :data:`TEXT_LIMIT` characters). The result is JSON-ready data; this module neither prints
nor writes files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from batchrun.report.completions import keyed_scan
from batchrun.report.load import DEFAULT_VARIANT, KEYS, RunData
from batchrun.report.summary import summarize

__all__ = ["TEXT_LIMIT", "compare_runs", "metrics"]

TEXT_LIMIT = 2000  # characters of each changed completion shown
_SIDE = ["status", "stop_reason", "error_type", "output_tokens", "completion"]


def compare_runs(a: RunData, b: RunData, *, rows: int = 20) -> dict[str, Any]:
    """Summaries of ``a`` and ``b``, a delta per metric, and up to ``rows`` changed rows."""
    sa, sb = summarize(a), summarize(b)
    return {
        "a": sa,
        "b": sb,
        "metrics": [_delta(name, sa, sb, path) for name, path in metrics(sa, sb)],
        "completions": _changed(a, b, rows),
    }


def metrics(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, tuple[str, ...]]]:
    """The compared metrics: (label, path into the summary), counts by kind over both runs."""
    found: list[tuple[str, tuple[str, ...]]] = [
        ("rows", ("rows",)),
        ("cache hits", ("cache_hits",)),
        ("ok", ("status", "ok")),
        ("error", ("status", "error")),
    ]
    for group, label in (("stop_reasons", "stop"), ("errors", "error type")):
        for key in dict.fromkeys([*a[group], *b[group]]):
            found.append((f"{label} {key}", (group, key)))
    found += [
        ("input tokens", ("tokens", "input")),
        ("output tokens", ("tokens", "output")),
        ("duration s", ("duration_s",)),
        ("requests/s", ("requests_per_s",)),
        ("ok rows/s", ("throughput", "ok_per_s")),
        ("output tokens/s", ("output_tokens_per_s",)),
    ]
    for key, label in (("ttft_s", "ttft"), ("tpot_s", "tpot"), ("e2e_s", "e2e")):
        found += [(f"{label} {p} s", (key, p)) for p in ("p50", "p90", "p99")]
    found.append(("est. cost $", ("cost", "cost_usd")))
    if a["cost"].get("judges") or b["cost"].get("judges"):
        found.append(("judges' est. cost $", ("cost", "judges", "cost_usd")))
    found += [
        ("attempts", ("attempts", "total")),
        ("retries", ("attempts", "retries")),
        ("retry wait s", ("retry_wait_s", "total")),
    ]
    return found


def _delta(
    name: str, a: Mapping[str, Any], b: Mapping[str, Any], path: tuple[str, ...]
) -> dict[str, Any]:
    va, vb = _get(a, path), _get(b, path)
    delta = None if va is None or vb is None else vb - va
    relative = None if delta is None or not va else delta / va
    return {"metric": name, "a": va, "b": vb, "delta": delta, "relative": relative}


def _get(summary: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = summary
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    if value is None and path[0] in ("stop_reasons", "errors"):
        return 0  # a kind that one run never saw happened zero times there
    if path[:2] == ("cost", "judges") and not summary["cost"].get("judges"):
        return 0.0  # a run without judges spent nothing on them
    return value


def _fingerprints(run: RunData) -> pl.LazyFrame:
    """Key, status and a hash of the completion (null stays null): 8 bytes of text a row."""
    text = pl.col("completion")
    return run.scan_results().select(
        *KEYS,
        "status",
        _h=pl.when(text.is_null()).then(None).otherwise(text.hash(seed=15)),
    )


def _sides(run: RunData, keys: pl.DataFrame) -> pl.DataFrame:
    """The shown columns of the rows with ``keys``, the completion cut short."""
    text = pl.col("completion")
    cut = pl.when(text.str.len_chars() > TEXT_LIMIT).then(
        text.str.slice(0, TEXT_LIMIT - 1) + pl.lit("…")
    )
    return (
        keyed_scan(run, keys)
        .select(*KEYS, *_SIDE)
        .with_columns(completion=cut.otherwise(text))
        .collect(engine="streaming")
    )


def _changed(a: RunData, b: RunData, rows: int) -> dict[str, Any]:
    joined = (
        _fingerprints(a)
        .join(_fingerprints(b), on=KEYS, how="full", coalesce=True, suffix="_b")
        .collect(engine="streaming")
    )
    in_a = pl.col("status").is_not_null()
    in_b = pl.col("status_b").is_not_null()
    both = joined.filter(in_a & in_b)
    changed = both.filter(pl.col("_h").ne_missing(pl.col("_h_b"))).sort(KEYS)
    shown = changed.head(rows).select(KEYS)
    side_a = _sides(a, shown)
    side_b = _sides(b, shown)
    pairs = shown.join(side_a, on=KEYS, how="left").join(side_b, on=KEYS, how="left", suffix="_b")
    variants = joined["variant"].unique().to_list()
    return {
        # how the rows are named: without variants, as before them
        "key": ["id", "sample"] if variants == [DEFAULT_VARIANT] else KEYS,
        "compared": both.height,
        "changed": changed.height,
        "only_in_a": joined.filter(in_a & ~in_b).height,
        "only_in_b": joined.filter(~in_a & in_b).height,
        "rows": [
            {
                "variant": row["variant"],
                "id": row["id"],
                "sample": row["sample"],
                "a": {name: row[name] for name in _SIDE},
                "b": {name: row[f"{name}_b"] for name in _SIDE},
            }
            for row in pairs.sort(KEYS).iter_rows(named=True)
        ],
    }
