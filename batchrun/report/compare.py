"""Two runs side by side: their summaries with deltas, and the rows whose completion changed;
with variants, the same per variant (each run's figures from ``variants.py``).

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
from batchrun.report.variants import variant_stats

__all__ = ["TEXT_LIMIT", "VARIANT_METRICS", "compare_runs", "metrics"]

TEXT_LIMIT = 2000  # characters of each changed completion shown
_SIDE = ["status", "stop_reason", "error_type", "output_tokens", "completion"]


def compare_runs(a: RunData, b: RunData, *, rows: int = 20) -> dict[str, Any]:
    """Summaries of ``a`` and ``b``, a delta per metric, up to ``rows`` changed rows, and with
    more than one variant between them, ``variants``: the same per variant."""
    sa, sb = summarize(a), summarize(b)
    joined = _joined(a, b)
    comparison = {
        "a": sa,
        "b": sb,
        "metrics": [_delta(name, sa, sb, path) for name, path in metrics(sa, sb)],
        "completions": _changed(a, b, joined, rows),
    }
    names = list(dict.fromkeys([*a.variants, *b.variants]))  # A's order, then B's own
    if len(names) > 1:
        comparison["variants"] = _per_variant(a, b, joined, names)
    return comparison


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


def _joined(a: RunData, b: RunData) -> pl.DataFrame:
    """Both runs' fingerprints on their key: ``status`` and ``_h`` of A, ``status_b`` and
    ``_h_b`` of B, null where the run has no such row."""
    return (
        _fingerprints(a)
        .join(_fingerprints(b), on=KEYS, how="full", coalesce=True, suffix="_b")
        .collect(engine="streaming")
    )


_IN_A = pl.col("status").is_not_null()
_IN_B = pl.col("status_b").is_not_null()
_CHANGED = _IN_A & _IN_B & pl.col("_h").ne_missing(pl.col("_h_b"))


def _changed(a: RunData, b: RunData, joined: pl.DataFrame, rows: int) -> dict[str, Any]:
    both = joined.filter(_IN_A & _IN_B)
    changed = joined.filter(_CHANGED).sort(KEYS)
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
        "only_in_a": joined.filter(_IN_A & ~_IN_B).height,
        "only_in_b": joined.filter(~_IN_A & _IN_B).height,
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


# The figures compared per variant: (label, path into a ``variant_stats`` entry).
VARIANT_METRICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("rows", ("rows",)),
    ("ok", ("ok",)),
    ("error", ("error",)),
    ("ok share", ("ok_share",)),
    ("cache hits", ("cache_hits",)),
    ("input tokens", ("tokens", "input")),
    ("output tokens", ("tokens", "output")),
    ("est. cost $", ("cost_usd",)),
    *(
        (f"{label} {p} s", (key, p))
        for key, label in (("ttft_s", "ttft"), ("e2e_s", "e2e"))
        for p in ("p50", "p90", "p99")
    ),
    ("stream output tokens/s p50", ("stream_output_tokens_per_s", "p50")),
)


def _per_variant(
    a: RunData, b: RunData, joined: pl.DataFrame, names: list[str]
) -> list[dict[str, Any]]:
    """Per variant (``names``, in order): each run's figures (``variant_stats``; null in a run
    without the variant), a delta per :data:`VARIANT_METRICS`, and its rows matched on
    (``variant``, ``id``, ``sample``): in both, changed, only in one."""
    stats_a = {v["variant"]: v for v in variant_stats(a)}
    stats_b = {v["variant"]: v for v in variant_stats(b)}
    matched = {
        row["variant"]: row
        for row in joined.group_by("variant")
        .agg(
            compared=(_IN_A & _IN_B).sum(),
            changed=_CHANGED.sum(),
            only_in_a=(_IN_A & ~_IN_B).sum(),
            only_in_b=(~_IN_A & _IN_B).sum(),
        )
        .iter_rows(named=True)
    }
    entries = []
    for name in names:
        va, vb = stats_a.get(name), stats_b.get(name)
        counts = matched.get(name, {})
        entries.append(
            {
                "variant": name,
                "a": va,
                "b": vb,
                "completions": {
                    key: int(counts.get(key) or 0)
                    for key in ("compared", "changed", "only_in_a", "only_in_b")
                },
                "metrics": [
                    _delta(label, va or {}, vb or {}, path) for label, path in VARIANT_METRICS
                ],
            }
        )
    return entries
