"""Two runs side by side: their summaries with deltas, and the rows whose completion changed.

Rows are matched on (``id``, ``sample``). The result is JSON-ready data; this module neither
prints nor writes files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from batchrun.report.load import RunData
from batchrun.report.summary import summarize

__all__ = ["compare_runs", "metrics"]

_KEYS = ["id", "sample"]
_SIDE = ["status", "stop_reason", "error_type", "output_tokens", "completion"]


def compare_runs(a: RunData, b: RunData, *, rows: int = 20) -> dict[str, Any]:
    """Summaries of ``a`` and ``b``, a delta per metric, and up to ``rows`` changed rows."""
    sa, sb = summarize(a), summarize(b)
    return {
        "a": sa,
        "b": sb,
        "metrics": [_delta(name, sa, sb, path) for name, path in metrics(sa, sb)],
        "completions": _changed(a.results, b.results, rows),
    }


def metrics(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, tuple[str, ...]]]:
    """The compared metrics: (label, path into the summary), counts by kind over both runs."""
    found: list[tuple[str, tuple[str, ...]]] = [
        ("rows", ("rows",)),
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
        ("output tokens/s", ("output_tokens_per_s",)),
    ]
    for key, label in (("ttft_s", "ttft"), ("tpot_s", "tpot"), ("e2e_s", "e2e")):
        found += [(f"{label} {p} s", (key, p)) for p in ("p50", "p90", "p99")]
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
    return value


def _changed(a: pl.DataFrame, b: pl.DataFrame, rows: int) -> dict[str, Any]:
    joined = a.select(_KEYS + _SIDE).join(
        b.select(_KEYS + _SIDE), on=_KEYS, how="full", coalesce=True, suffix="_b"
    )
    in_a = pl.col("status").is_not_null()
    in_b = pl.col("status_b").is_not_null()
    both = joined.filter(in_a & in_b)
    changed = both.filter(pl.col("completion").ne_missing(pl.col("completion_b"))).sort(_KEYS)
    return {
        "compared": both.height,
        "changed": changed.height,
        "only_in_a": joined.filter(in_a & ~in_b).height,
        "only_in_b": joined.filter(~in_a & in_b).height,
        "rows": [
            {
                "id": row["id"],
                "sample": row["sample"],
                "a": {name: row[name] for name in _SIDE},
                "b": {name: row[f"{name}_b"] for name in _SIDE},
            }
            for row in changed.head(rows).iter_rows(named=True)
        ],
    }
