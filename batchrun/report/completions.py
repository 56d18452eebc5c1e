"""What a reader of an eval run looks at first: some completions, and how long they are.

The completion text is the widest column of a run folder, so it is never read for every row:
the rows shown are picked on the narrow columns (``RunData.results``) and their text is then
fetched from a lazy scan of just those keys; the lengths are one number a row, computed in a
streaming scan. The random picks are deterministic (the smallest hashes of ``id`` and
``sample``), so the same folder shows the same rows every time. Plain data; nothing printed.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from batchrun.report.load import RunData

__all__ = ["TEXT_LIMIT", "output_lengths", "picked_completions"]

TEXT_LIMIT = 500  # characters of a completion or an error message kept in the summary
_KEYS = ["id", "sample"]
_SHOWN = ["id", "sample", "status", "stop_reason", "error_type", "e2e_s", "output_tokens"]


def picked_completions(run: RunData, n: int = 5) -> dict[str, list[dict[str, Any]]]:
    """Up to ``n`` rows each: the slowest ok, the first failed (with their error) and random
    ones, each with its completion cut to :data:`TEXT_LIMIT` characters."""
    results = run.results
    slowest = (
        results.filter(pl.col("status") == "ok")
        .drop_nulls("e2e_s")
        .sort("e2e_s", descending=True)
        .head(n)
    )
    failed = results.filter(pl.col("status") == "error").sort("finished_at", nulls_last=True)
    chance = results.with_columns(_pick=pl.struct(_KEYS).hash(seed=15)).sort("_pick").head(n)
    picks = {"slowest": slowest, "failed": failed.head(n), "random": chance}
    wanted = pl.concat([frame.select(_KEYS) for frame in picks.values()]).unique()
    text = (
        run.scan_results()
        .join(wanted.lazy(), on=_KEYS, how="semi")
        .select(*_KEYS, completion=pl.col("completion").str.slice(0, TEXT_LIMIT + 1))
        .collect(engine="streaming")
    )
    return {name: _rows(frame, text) for name, frame in picks.items()}


def _rows(frame: pl.DataFrame, text: pl.DataFrame) -> list[dict[str, Any]]:
    joined = frame.select(*_SHOWN, "error_message").join(text, on=_KEYS, how="left")
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
