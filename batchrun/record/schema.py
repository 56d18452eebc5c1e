"""Stage 4, record: the columns of results.parquet and attempts.parquet, every one in this
module, and the rows a request and its attempts become. Pure: it reads and writes no file (the
Parquet writer is ``record.parquet``) and sends nothing.

Adding a column is one line in a schema here and its value in :func:`result_row` or
:func:`attempt_row`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import polars as pl

from batchrun.clock import Clock
from batchrun.errors import AttemptError
from batchrun.job.prices import CacheRates
from batchrun.models import Attempt, RequestItem
from batchrun.record.cost import row_cost

__all__ = ["ATTEMPT_SCHEMA", "RESULT_SCHEMA", "attempt_row", "key_columns", "result_row"]

_TS = pl.Datetime("us", "UTC")

RESULT_SCHEMA: Mapping[str, pl.DataType | type[pl.DataType]] = {
    "run_id": pl.String,
    "id": pl.String,
    "sample": pl.Int64,
    "model": pl.String,
    "api": pl.String,
    "status": pl.String,
    "completion": pl.String,
    "content_json": pl.String,
    "stop_reason": pl.String,
    "stop_sequence": pl.String,
    "input_tokens": pl.Int64,
    "output_tokens": pl.Int64,
    "error_type": pl.String,
    "error_message": pl.String,
    "http_status": pl.Int64,
    "attempts": pl.Int64,
    "request_id": pl.String,
    "started_at": _TS,
    "finished_at": _TS,
    "queue_s": pl.Float64,
    "retry_wait_s": pl.Float64,
    "ttft_s": pl.Float64,
    "e2e_s": pl.Float64,
    "tpot_s": pl.Float64,
    "output_tokens_per_s": pl.Float64,
    "chunk_offsets_s": pl.List(pl.Float64),
    "trace_id": pl.String,
    # An addition to the contract: sha256 of the request as sent (API path and JSON body), so a
    # resumed run can tell that the job still asks for the same thing.
    "request_hash": pl.String,
    # The input row's 0-based position across the input files (null in rows recorded before
    # the column existed); compaction orders results.parquet by it, then by sample.
    "input_row": pl.Int64,
    # Second release (CONTRACT.md, Additions), after the first release's columns. From the
    # final usage (the stream's, or the batch result's); null where it had none.
    "cache_read_input_tokens": pl.Int64,
    "cache_creation_input_tokens": pl.Int64,
    "cache_creation_5m_input_tokens": pl.Int64,
    "cache_creation_1h_input_tokens": pl.Int64,
    "service_tier": pl.String,
    "usage_json": pl.String,
    "ttft_text_s": pl.Float64,  # first text delta minus request sent, on the successful attempt
    "cost_usd": pl.Float64,  # list prices with cache prices, at the mode's rate
    "cache_hit": pl.Boolean,  # from the response cache, nothing sent (null in older folders)
    # The job's variant the request ran under; with id and sample, the row's key. Folders
    # written before it read it as "default" (record.parquet fills it in).
    "variant": pl.String,
}

ATTEMPT_SCHEMA: Mapping[str, pl.DataType | type[pl.DataType]] = {
    "run_id": pl.String,
    "id": pl.String,
    "sample": pl.Int64,
    "attempt": pl.Int64,
    "outcome": pl.String,
    "http_status": pl.Int64,
    "request_id": pl.String,
    "started_at": _TS,
    "finished_at": _TS,
    "backoff_s": pl.Float64,
    "ttft_s": pl.Float64,
    "output_tokens_seen": pl.Int64,
    "retry_after_s": pl.Float64,
    "error_message": pl.String,
    "input_row": pl.Int64,
    "variant": pl.String,
}


_SURROGATE = re.compile("[\ud800-\udfff]")


def _utf8(text: str | None) -> str | None:
    """Text Parquet can hold: a lone UTF-16 surrogate (valid JSON, invalid UTF-8) becomes U+FFFD."""
    return _SURROGATE.sub("\ufffd", text) if text is not None else None


def key_columns(run_id: str, item: RequestItem) -> dict[str, Any]:
    """The columns every row of a request starts with, in results and attempts alike: the run,
    the row's key (``variant``, ``id``, ``sample``) and its place in the input."""
    return {
        "run_id": run_id,
        "id": item.id,
        "sample": item.sample,
        "input_row": item.row,
        "variant": item.variant,
    }


def attempt_row(
    run_id: str, item: RequestItem, number: int, backoff_s: float, a: Attempt, clock: Clock
) -> dict[str, Any]:
    """The attempts.parquet row of one attempt."""
    err = a.error
    return {
        **key_columns(run_id, item),
        "attempt": number,
        "outcome": "ok" if err is None else err.error_type,
        "http_status": a.http_status,
        "request_id": a.request_id,
        "started_at": clock.wall(a.sent_at),
        "finished_at": clock.wall(a.ended_at),
        "backoff_s": backoff_s,
        "ttft_s": a.ttft_s,
        "output_tokens_seen": a.output_tokens_seen,
        "retry_after_s": err.retry_after if err is not None else None,
        "error_message": _utf8(err.message) if err is not None else None,
    }


def result_row(
    *,
    run_id: str,
    item: RequestItem,
    model: str | None,
    api: str,
    final: Attempt,
    error: AttemptError | None,
    attempts: int,
    first_sent: float,
    queue_s: float,
    retry_wait_s: float,
    trace_id: str | None,
    request_hash: str,
    clock: Clock,
    rates: CacheRates | None = None,
) -> dict[str, Any]:
    """The results.parquet row of one request, from its last attempt; timing from the
    successful attempt only, so a failed attempt's text or timing never leaks in.
    ``rates`` prices the row (``cost_usd``) at the mode's rate; ``None``: no price."""
    row: dict[str, Any] = dict.fromkeys(RESULT_SCHEMA)
    row.update(key_columns(run_id, item))
    row.update(
        model=model,
        api=api,
        status="ok" if error is None else "error",
        error_type=None if error is None else error.error_type,
        error_message=None if error is None else _utf8(error.message),
        http_status=final.http_status,
        attempts=attempts,
        request_id=final.request_id,
        started_at=clock.wall(first_sent),
        finished_at=clock.wall(final.ended_at),
        queue_s=max(0.0, queue_s),
        retry_wait_s=retry_wait_s,
        trace_id=trace_id,
        request_hash=request_hash,
        cache_hit=False,
    )
    done = final.completion
    if error is None and done is not None:
        offsets = final.chunk_offsets
        out = done.output_tokens
        e2e = final.e2e_s
        usage = {
            "input_tokens": done.input_tokens,
            "output_tokens": out,
            "cache_read_input_tokens": done.cache_read_input_tokens,
            "cache_creation_input_tokens": done.cache_creation_input_tokens,
            "cache_creation_5m_input_tokens": done.cache_creation_5m_input_tokens,
            "cache_creation_1h_input_tokens": done.cache_creation_1h_input_tokens,
        }
        row.update(
            usage,
            cost_usd=row_cost(rates, **usage),
            service_tier=_utf8(done.service_tier),
            usage_json=_utf8(done.usage_json),
            completion=_utf8(done.text),
            content_json=_utf8(done.content_json),
            stop_reason=done.stop_reason,
            stop_sequence=_utf8(done.stop_sequence),
            ttft_s=final.ttft_s,
            ttft_text_s=final.ttft_text_s,
            e2e_s=e2e,
            chunk_offsets_s=offsets,
            tpot_s=(offsets[-1] - offsets[0]) / (out - 1)
            if out is not None and out >= 2 and offsets
            else None,
            output_tokens_per_s=out / e2e if out is not None and e2e > 0 else None,
        )
    return row
