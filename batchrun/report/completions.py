"""What a reader of an eval run looks at first: some completions, and how long they are.

The completion text is the widest column of a run folder, so it is never read for every row:
the rows shown are picked on the narrow columns (``RunData.results``) and their text is then
fetched from a lazy scan of just those keys; the lengths are one number a row, computed in a
streaming scan. The random picks are deterministic (the smallest hashes of ``id`` and
``sample``, so an input row picked shows under each variant), so the same folder shows the
same rows every time. Plain data; nothing printed.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from batchrun.report.load import KEYS, SENT, RunData

__all__ = ["TEXT_LIMIT", "keyed_scan", "output_lengths", "picked_completions"]

TEXT_LIMIT = 500  # characters of a completion or an error message kept in the summary
_SHOWN = [*KEYS, "status", "stop_reason", "error_type", "e2e_s", "output_tokens"]


def picked_completions(run: RunData, n: int = 5) -> dict[str, list[dict[str, Any]]]:
    """Up to ``n`` rows each: the slowest ok (of the rows sent: a response cache hit's time is
    another run's), the first failed (with their error) and random ones, each with its
    completion cut to :data:`TEXT_LIMIT` characters."""
    shown = run.results.lazy().select(*_SHOWN, "error_message", "finished_at", "cache_hit")
    # top_k/bottom_k over a projection: sorting the whole frame took ~800 MB for a million rows
    slowest = (
        shown.filter((pl.col("status") == "ok") & SENT)
        .drop_nulls("e2e_s")
        .top_k(n, by="e2e_s")
        .sort("e2e_s", descending=True)
    )
    failed = (
        shown.filter(pl.col("status") == "error")
        .drop_nulls("finished_at")
        .bottom_k(n, by="finished_at")
        .sort("finished_at")
    )
    chance = (
        shown.with_columns(_pick=pl.struct("id", "sample").hash(seed=15))
        .bottom_k(n, by=["_pick", "variant"])
        .sort("_pick", "variant")
        .drop("_pick")
    )
    found = pl.collect_all([slowest, failed, chance])
    picks = dict(zip(("slowest", "failed", "random"), found, strict=True))
    wanted = pl.concat([frame.select(KEYS) for frame in picks.values()]).unique()
    text = (
        keyed_scan(run, wanted)
        .select(*KEYS, completion=pl.col("completion").str.slice(0, TEXT_LIMIT + 1))
        .collect(engine="streaming")
    )
    return {name: _rows(frame, text) for name, frame in picks.items()}


def keyed_scan(run: RunData, keys: pl.DataFrame) -> pl.LazyFrame:
    """The results rows with these few (``variant``, ``id``, ``sample``) keys, every column,
    lazily.

    The filter on the ids is pushed into the Parquet scan, so the text of other rows is never
    held (a semi join alone read every completion: ~1.4 GB for a million rows).
    """
    ids = keys["id"].unique().to_list()
    return run.scan_results().filter(pl.col("id").is_in(ids)).join(keys.lazy(), on=KEYS, how="semi")


def _rows(frame: pl.DataFrame, text: pl.DataFrame) -> list[dict[str, Any]]:
    joined = frame.select(*_SHOWN, "error_message").join(text, on=KEYS, how="left")
    rows = joined.to_dicts()
    for row in rows:
        for key in ("completion", "error_message"):
            value = row[key]
            if isinstance(value, str) and len(value) > TEXT_LIMIT:
                row[key] = value[: TEXT_LIMIT - 1] + "…"
    return rows


def output_lengths(run: RunData) -> tuple[str, pl.Series]:
    """The unit and the length of every ok row's output: tokens when the API counted them,
    else characters of the completion (the legacy complete API counts none)."""
    tokens = run.results.filter(pl.col("status") == "ok")["output_tokens"].drop_nulls()
    if not tokens.is_empty():
        return "tokens", tokens
    chars = (
        run.scan_results()
        .filter(pl.col("status") == "ok")
        .select(pl.col("completion").str.len_chars())
        .collect(engine="streaming")
        .to_series()
        .drop_nulls()
    )
    return "characters", chars
