"""Batch mode's record step: one result of an ended batch as a result row and an attempt row.

As in stream mode: ``succeeded`` is an ``ok`` row whose completion, content_json, stop reason
and usage come from :meth:`~batchrun.apis.Api.batch_completion`, so both modes fill them the same
way; ``errored`` is retried in a follow-up batch when its error type is retryable and attempts
remain, else an ``error`` row of that type; ``canceled`` and ``expired`` are ``error`` rows of
those types. Timing columns are null, since a batch has no per-request timing; ``started_at``
is when the request was first submitted and ``finished_at`` when its last batch ended;
``request_id`` is that of the response that created the batch. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from batchrun.apis import Api
from batchrun.batch.api import parse_time
from batchrun.batch.entries import Entry
from batchrun.clock import Clock
from batchrun.errors import AttemptError, PermanentError, RetryableError
from batchrun.job.prices import CacheRates
from batchrun.models import Attempt, Completion, RequestItem
from batchrun.record.schema import attempt_row, result_row

__all__ = ["BatchTimes", "Settled", "settle"]

_TIMING = (
    "queue_s",
    "retry_wait_s",
    "ttft_s",
    "ttft_text_s",
    "e2e_s",
    "tpot_s",
    "output_tokens_per_s",
    "chunk_offsets_s",
)
_UNPROCESSED = {
    "canceled": "the batch was canceled before this request was processed",
    "expired": "the batch expired (24 hours) before this request was processed",
}


@dataclass(frozen=True, slots=True)
class BatchTimes:
    """What every row from one batch shares."""

    request_id: str | None  # of the response that created the batch
    created: datetime
    ended: datetime


@dataclass(frozen=True, slots=True)
class Settled:
    """A result's rows: ``result`` is ``None`` when the request goes into a follow-up batch."""

    result: dict[str, Any] | None
    attempt: dict[str, Any]
    error: AttemptError | None


def outcome(result: Any, api: Api) -> Completion | AttemptError:
    """A result object (``{"type": ..., ...}``) as a completion or the error it carries;
    ``None`` (no line for the request) is a retryable ``missing_result``."""
    if result is None:
        return RetryableError("missing_result", "the batch's results hold no line for it")
    kind = result.get("type") if isinstance(result, dict) else None
    if kind == "succeeded":
        try:
            return api.batch_completion(result.get("message"))
        except AttemptError as exc:
            return exc
    if kind == "errored":
        error = result.get("error")
        # {"type": "error", "error": {"type", "message"}}; older answers leave out the envelope.
        inner = error.get("error") if isinstance(error, dict) else None
        detail = inner if isinstance(inner, dict) else error if isinstance(error, dict) else {}
        error_type, message = detail.get("type"), detail.get("message")
        return api.classify(
            error_type if isinstance(error_type, str) and error_type else "api_error",
            message[:500] if isinstance(message, str) else "errored in the batch",
        )
    if kind in _UNPROCESSED:
        return PermanentError(str(kind), _UNPROCESSED[str(kind)])
    return RetryableError("invalid_response", f"a result of unknown type {kind!r}")


def settle(
    result: Any,
    entry: Entry,
    *,
    run_id: str,
    api: Api,
    model: str | None,
    times: BatchTimes,
    may_retry: bool,
    clock: Clock,
    rates: CacheRates | None = None,
) -> Settled:
    """The rows of ``entry``'s ``result`` (a result object, or an error that stands for one);
    a retryable error with ``may_retry`` gets no result row (the request goes again, as
    attempt ``entry.attempt + 1``). ``rates`` (the batch rates) price the row."""
    got = result if isinstance(result, AttemptError) else outcome(result, api)
    error = got if isinstance(got, AttemptError) else None
    completion = got if isinstance(got, Completion) else None
    item = RequestItem(id=entry.id, sample=entry.sample, messages=(), variant=entry.variant)
    final = Attempt(request_id=times.request_id, completion=completion, error=error)
    attempt = attempt_row(run_id, item, entry.attempt, 0.0, final, clock)
    # Batch state written before input_row was kept: the row is not known (null, not 0).
    input_row = {"input_row": entry.input_row}
    attempt.update(started_at=times.created, finished_at=times.ended, ttft_s=None, **input_row)
    if may_retry and isinstance(error, RetryableError):
        return Settled(None, attempt, error)
    row = result_row(
        run_id=run_id,
        item=item,
        model=model,
        api=api.name,
        final=final,
        error=error,
        attempts=entry.attempt,
        first_sent=0.0,
        queue_s=0.0,
        retry_wait_s=0.0,
        trace_id=None,
        request_hash=entry.request_hash,
        clock=clock,
        rates=rates,
    )
    row.update(dict.fromkeys(_TIMING), **input_row)
    row.update(started_at=parse_time(entry.first_at) or times.created, finished_at=times.ended)
    return Settled(row, attempt, error)
