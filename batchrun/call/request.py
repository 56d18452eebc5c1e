"""Stage 3, stream mode: one request through all its attempts, into one result row.

For each attempt: wait for the budget, stream it (:mod:`batchrun.call.attempt`), record an
attempt row; the retry policy decides whether to go again. The outcome, success or failure,
becomes a result row and a span (:mod:`batchrun.telemetry.genai`); a per-request failure is
data, never an exception. Only a fatal API error leaves this module, as a call to ``on_fatal``,
and cancellation (a signal's grace period running out, an endpoint found unreachable), which
records nothing so that the request is sent again on resume. The row of a request that gave up
because the endpoint could not be reached is held until the pool's verdict on the endpoint
(:mod:`batchrun.call.reachability`). It opens no run and decides
nothing about one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from opentelemetry import trace

from batchrun.apis import Api, build_request
from batchrun.call.attempt import stream_attempt
from batchrun.call.endpoint import ApiClient
from batchrun.call.reachability import Reachability, failed_to_reach
from batchrun.call.retry import RetryPolicy
from batchrun.clock import Clock, Sleep
from batchrun.errors import AttemptError, FatalAPIError, RetryableError
from batchrun.job.schema import Job
from batchrun.models import Attempt, RequestItem
from batchrun.record.cost import rates_for
from batchrun.record.parquet import ResultsWriter
from batchrun.record.response_cache import ResponseCache, cache_key, hit_row
from batchrun.record.schema import attempt_row, result_row
from batchrun.schedule.limits import Budget, BudgetWaitError
from batchrun.schedule.spend import SpendLedger
from batchrun.telemetry.genai import RequestTelemetry
from batchrun.telemetry.progress import Progress

__all__ = ["StreamContext", "process"]

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class StreamContext:
    """What every request of one stream-mode run shares."""

    job: Job
    run_id: str
    client: ApiClient
    writer: ResultsWriter
    clock: Clock
    sleep: Sleep
    budget: Budget
    progress: Progress
    telemetry: RequestTelemetry
    on_fatal: Callable[[FatalAPIError], None]
    reach: Reachability
    spend: SpendLedger = field(default_factory=SpendLedger)  # default: no cap
    cache: ResponseCache | None = None  # the response cache (job's cache.mode), or None


@dataclass(frozen=True, slots=True)
class _Sent:
    """What a request's attempts have done so far."""

    attempts: tuple[Attempt, ...] = ()
    rows: tuple[dict[str, Any], ...] = ()  # their attempts.parquet rows
    retry_wait_s: float = 0.0

    @property
    def final(self) -> Attempt:
        return self.attempts[-1]

    @property
    def first_sent(self) -> float:
        return self.attempts[0].sent_at


async def process(ctx: StreamContext, item: RequestItem, queued_at: float) -> None:
    """Send ``item`` until it succeeds, fails for good or runs out of attempts; record it."""
    job, tel = ctx.job, ctx.telemetry.of(item.variant)
    request = job.variant(item.variant).request  # the variant picks the model and its keys
    api = request.api_spec
    body, request_hash = build_request(api, item, request.params, job.endpoint.betas)
    key = ""
    if ctx.cache is not None:
        endpoint = job.endpoint
        key = cache_key(request_hash, item.sample, endpoint.anthropic_version, endpoint.base_url)
        cached = await asyncio.to_thread(ctx.cache.get, key)
        if cached is not None:
            _record_hit(ctx, item, queued_at, request_hash, cached)
            return
    hold = await ctx.spend.reserve(api, body, item.variant)
    if hold is None:
        return  # past the spend cap: not sent, not recorded; dispatch stops
    sent = _Sent()
    span = tel.start(item, queued_at, body)
    trace_id = format(span.get_span_context().trace_id, "032x")
    with (
        trace.use_span(span, end_on_exit=False),
        structlog.contextvars.bound_contextvars(
            variant=item.variant, id=item.id, sample=item.sample, trace_id=trace_id
        ),
    ):

        async def attempt_once(number: int, backoff_s: float) -> Attempt:
            nonlocal sent
            structlog.contextvars.bind_contextvars(attempt=number)
            attempt = await _attempt(ctx, tel, api, body, number, backoff_s)
            row = attempt_row(ctx.run_id, item, number, backoff_s, attempt, ctx.clock)
            sent = _Sent(
                (*sent.attempts, attempt), (*sent.rows, row), sent.retry_wait_s + backoff_s
            )
            if attempt.error is not None:
                raise attempt.error
            return attempt

        def on_retry(exc: RetryableError, wait_s: float, next_attempt: int) -> None:
            ctx.progress.retry(exc.error_type)
            tel.retried(exc)
            log.info(
                "batchrun.request.retry_scheduled",
                error_type=exc.error_type,
                error=exc.message,
                http_status=exc.http_status,
                wait_s=round(wait_s, 3),
                next_attempt=next_attempt,
            )

        policy = RetryPolicy(
            max_attempts=job.retry.max_attempts,
            initial_backoff_s=job.retry.initial_backoff_s,
            max_backoff_s=job.retry.max_backoff_s,
            sleep=ctx.sleep,
            on_retry=on_retry,
        )
        error: AttemptError | None = None
        try:
            await policy.call(attempt_once)
        except FatalAPIError as exc:
            # No request can succeed: no result row, so a run after the fix sends it again.
            ctx.writer.add_attempts(sent.rows)
            ctx.spend.settle(hold, None)
            tel.end(span, exc, None)
            ctx.on_fatal(exc)
            return
        except AttemptError as exc:
            error = exc
            tel.failed(exc)
            log.warning(
                "batchrun.request.failed",
                error_type=exc.error_type,
                error=exc.message,
                http_status=exc.http_status,
                attempts=len(sent.attempts),
            )
        except BaseException:
            ctx.spend.settle(hold, None)
            _cancelled(span)
            raise
        finally:
            structlog.contextvars.unbind_contextvars("attempt")
        row = result_row(
            run_id=ctx.run_id,
            item=item,
            model=request.model,
            api=api.name,
            final=sent.final,
            error=error,
            attempts=len(sent.attempts),
            first_sent=sent.first_sent,
            queue_s=sent.first_sent - queued_at,
            retry_wait_s=sent.retry_wait_s,
            trace_id=trace_id,
            request_hash=request_hash,
            clock=ctx.clock,
            rates=rates_for(request.model, job.prices),
        )
        ctx.spend.settle(hold, row["cost_usd"])
        tel.end(span, error, sent.final, row["cost_usd"])

    def record() -> None:
        ctx.writer.add(row, sent.rows)
        ctx.progress.update(ok=error is None, output_tokens=row["output_tokens"])

    if error is not None and failed_to_reach(sent.final):
        # Not a row yet: if the endpoint turns out to be down, the run stops without it (its
        # attempts are kept) and the next run sends the request again.
        ctx.reach.after_streak(record, lambda: ctx.writer.add_attempts(sent.rows))
    else:
        record()
        if error is None and ctx.cache is not None:
            await asyncio.to_thread(ctx.cache.put, key, row)


def _record_hit(
    ctx: StreamContext,
    item: RequestItem,
    queued_at: float,
    request_hash: str,
    cached: dict[str, Any],
) -> None:
    """A cached response as this run's row: nothing sent, no attempt row, no span."""
    now = ctx.clock.now()
    row = hit_row(
        cached,
        run_id=ctx.run_id,
        item=item,
        model=ctx.job.variant(item.variant).request.model,
        api=ctx.job.request.api_spec.name,
        request_hash=request_hash,
        at=ctx.clock.wall(now),
        queue_s=now - queued_at,
    )
    ctx.writer.add(row, ())
    ctx.progress.update(ok=True, output_tokens=row["output_tokens"])
    log.debug("batchrun.request.cache_hit", variant=item.variant, id=item.id, sample=item.sample)


def _chunk_observer(ctx: StreamContext, tel: RequestTelemetry) -> Callable[[float], None]:
    """Per content chunk: the metric, and the news that the endpoint answers."""
    record, alive = tel.chunk_recorder(), ctx.reach.alive

    def on_chunk(offset: float) -> None:
        record(offset)
        alive()

    return on_chunk


def _cancelled(span: trace.Span) -> None:
    span.set_attribute("batchrun.cancelled", True)
    span.end()


async def _attempt(
    ctx: StreamContext,
    tel: RequestTelemetry,
    api: Api,
    body: dict[str, Any],
    number: int,
    backoff_s: float,
) -> Attempt:
    """One attempt, after the budget allows it, inside its own span; the budget is settled
    with what it used."""
    try:
        reservation = await ctx.budget.acquire(body)
    except BudgetWaitError as exc:
        # The pool is paused longer than this request may wait: an attempt that never went
        # out, recorded so the row says why it ended.
        now = ctx.clock.now()
        return Attempt(sent_at=now, ended_at=now, error=exc)
    attempt = Attempt()  # what settle sees if the attempt is cancelled
    try:
        with tel.attempt_span(number, backoff_s) as span:
            attempt = await stream_attempt(
                ctx.client,
                api,
                body,
                total_s=ctx.job.timeouts.total_s,
                clock=ctx.clock,
                on_chunk=_chunk_observer(ctx, tel),
            )
            tel.annotate(span, attempt)
    finally:
        ctx.budget.settle(reservation, attempt)
    ctx.reach.saw(attempt)
    tel.attempt_metrics(attempt)
    return attempt
