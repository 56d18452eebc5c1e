"""Stage 3's driver: one request through all its attempts, into one result row.

For each attempt: wait for the budget, stream it (``client``), record an attempt row; the retry
policy decides whether to go again. The outcome, success or failure, becomes a result row and
a span; a per-request failure is data, never an exception. Only a fatal API error leaves this
module, as a call to ``on_fatal``, and cancellation (a signal's grace period running out), which
records nothing so that the request is sent again on resume.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import structlog
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode

from batchrun.apis import bodies as apis
from batchrun.call.attempt import stream_attempt
from batchrun.call.endpoint import ApiClient
from batchrun.call.retry import RetryPolicy, Sleep
from batchrun.clock import Clock
from batchrun.errors import AttemptError, FatalAPIError, RetryableError
from batchrun.job.schema import Job
from batchrun.models import Attempt, RequestItem
from batchrun.record.parquet import ResultsWriter
from batchrun.record.schema import attempt_row, result_row
from batchrun.schedule.limits import Budget, BudgetWaitError
from batchrun.telemetry.progress import Progress
from batchrun.telemetry.setup import Telemetry

__all__ = ["RunContext", "build_request", "process"]

log = structlog.get_logger()

_NO_PARENT = trace.set_span_in_context(trace.INVALID_SPAN)
# The GenAI metric attributes; the request span has more (max_tokens, sampling, the row).
_METRIC_KEYS = frozenset(
    {
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.request.model",
        "server.address",
        "server.port",
    }
)


@dataclass
class RunContext:
    """What every request of one run shares."""

    job: Job
    run_id: str
    client: ApiClient
    writer: ResultsWriter
    clock: Clock
    sleep: Sleep
    budget: Budget
    progress: Progress
    telemetry: Telemetry
    run_span: SpanContext
    on_fatal: Callable[[FatalAPIError], None]
    # The same for every request of the run: made once, not per request.
    span_attributes: dict[str, Any] = field(init=False)
    metric_attributes: dict[str, Any] = field(init=False)
    links: list[Link] = field(init=False)

    def __post_init__(self) -> None:
        self.span_attributes = _run_attributes(self.job)
        self.metric_attributes = {
            k: v for k, v in self.span_attributes.items() if k in _METRIC_KEYS
        }
        self.links = [Link(self.run_span)]


def build_request(job: Job, item: RequestItem) -> tuple[dict[str, Any], str]:
    """The JSON body for ``item`` and its hash (sha256 over API path and canonical body)."""
    req = job.request
    body = apis.build_body(
        req.api,
        item,
        model=req.model,
        max_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        stop_sequences=req.stop_sequences,
    )
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    digest = hashlib.sha256(f"{apis.request_path(req.api)}\n{canonical}".encode()).hexdigest()
    return body, digest


async def process(ctx: RunContext, item: RequestItem, queued_at: float) -> None:
    """Send ``item`` until it succeeds, fails for good or runs out of attempts; record it."""
    job = ctx.job
    req = job.request
    body, request_hash = build_request(job, item)
    attempts: list[dict[str, Any]] = []
    state: dict[str, Any] = {"final": None, "first_sent": None, "retry_wait": 0.0}

    attributes = {**ctx.span_attributes, "batchrun.id": item.id, "batchrun.sample": item.sample}
    metric_attributes = ctx.metric_attributes
    if job.telemetry.capture_content:
        attributes["gen_ai.input.messages"] = json.dumps(list(item.messages), ensure_ascii=False)
        if item.system:
            attributes["gen_ai.system_instructions"] = item.system
    span = ctx.telemetry.tracer.start_span(
        f"{attributes['gen_ai.operation.name']} {req.model}",
        kind=SpanKind.CLIENT,
        # Each request is a trace of its own, so a row's trace_id finds just that request;
        # the link leads to the run's span.
        context=_NO_PARENT,
        links=ctx.links,
        start_time=ctx.clock.epoch_ns(queued_at),
        attributes=attributes,
    )
    trace_id = format(span.get_span_context().trace_id, "032x")
    with (
        trace.use_span(span, end_on_exit=False),
        structlog.contextvars.bound_contextvars(id=item.id, sample=item.sample, trace_id=trace_id),
    ):

        async def attempt_once(number: int, backoff_s: float) -> Attempt:
            state["retry_wait"] += backoff_s
            structlog.contextvars.bind_contextvars(attempt=number)
            try:
                reservation = await ctx.budget.acquire(body)
            except BudgetWaitError as exc:
                # The pool is paused longer than this request may wait: an attempt that never
                # went out, recorded so the row says why it ended.
                now = ctx.clock.now()
                attempt = Attempt(sent_at=now, ended_at=now, error=exc)
            else:
                attempt = Attempt()  # what settle sees if the attempt is cancelled
                try:
                    attempt = await _traced_attempt(
                        ctx, body, number, backoff_s, _chunk_recorder(ctx)
                    )
                finally:
                    ctx.budget.settle(reservation, attempt)
                _record_metrics(ctx, attempt, metric_attributes)
            if state["first_sent"] is None:
                state["first_sent"] = attempt.sent_at
            state["final"] = attempt
            attempts.append(attempt_row(ctx.run_id, item, number, backoff_s, attempt, ctx.clock))
            if attempt.error is not None:
                raise attempt.error
            return attempt

        def on_retry(exc: RetryableError, wait_s: float, next_attempt: int) -> None:
            ctx.progress.retry()
            ctx.telemetry.instruments.retries.add(
                1, {**metric_attributes, "error.type": exc.error_type}
            )
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
            ctx.writer.add_attempts(attempts)
            _end_span(span, ctx, exc, None)
            ctx.on_fatal(exc)
            return
        except AttemptError as exc:
            error = exc
            ctx.telemetry.instruments.errors.add(
                1, {**metric_attributes, "error.type": exc.error_type}
            )
            log.warning(
                "batchrun.request.failed",
                error_type=exc.error_type,
                error=exc.message,
                http_status=exc.http_status,
                attempts=len(attempts),
            )
        except BaseException:
            span.set_attribute("batchrun.cancelled", True)
            span.end()
            raise
        finally:
            structlog.contextvars.unbind_contextvars("attempt")
        final: Attempt = state["final"]
        row = result_row(
            run_id=ctx.run_id,
            item=item,
            model=req.model,
            api=req.api,
            final=final,
            error=error,
            attempts=len(attempts),
            first_sent=state["first_sent"],
            queue_s=state["first_sent"] - queued_at,
            retry_wait_s=state["retry_wait"],
            trace_id=trace_id,
            request_hash=request_hash,
            clock=ctx.clock,
        )
        if job.telemetry.capture_content and final.completion is not None and error is None:
            span.set_attribute(
                "gen_ai.output.messages",
                json.dumps(
                    [{"role": "assistant", "content": final.completion.text}], ensure_ascii=False
                ),
            )
        _end_span(span, ctx, error, final)
    ctx.writer.add(row, attempts)
    ctx.progress.update(ok=error is None, output_tokens=row["output_tokens"])


async def _traced_attempt(
    ctx: RunContext,
    body: dict[str, Any],
    number: int,
    backoff_s: float,
    on_chunk: Callable[[float], None],
) -> Attempt:
    """One attempt inside its own child span, with the first token as a span event."""
    with ctx.telemetry.tracer.start_as_current_span(
        f"attempt {number}",
        kind=SpanKind.INTERNAL,
        attributes={"batchrun.attempt": number, "batchrun.backoff_s": backoff_s},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        attempt = await stream_attempt(
            ctx.client,
            ctx.job.request.api,
            body,
            total_s=ctx.job.timeouts.total_s,
            clock=ctx.clock,
            on_chunk=on_chunk,
        )
        if attempt.http_status is not None:
            span.set_attribute("http.response.status_code", attempt.http_status)
        if attempt.request_id is not None:
            span.set_attribute("anthropic.request_id", attempt.request_id)
        if attempt.ttft_s is not None:
            span.add_event(
                "gen_ai.first_token", timestamp=ctx.clock.epoch_ns(attempt.sent_at + attempt.ttft_s)
            )
        if attempt.error is not None:
            span.set_attribute("error.type", attempt.error.error_type)
            if attempt.error.retry_after is not None:
                span.set_attribute("batchrun.retry_after_s", attempt.error.retry_after)
            span.set_status(Status(StatusCode.ERROR, attempt.error.message[:200]))
    return attempt


def _chunk_recorder(ctx: RunContext) -> Callable[[float], None]:
    """Records the time per output chunk as each chunk arrives.

    A chunk is what arrived in one read. Recording each at its arrival, rather than all of an
    attempt's at its end, keeps the event loop free of a burst of metric calls (each costs
    the SDK ~7 µs; a wave of streams ending together made the next wave's first tokens late).
    The attributes are the run's: the outcome (``error.type``) is not known yet.
    """
    record, attributes = ctx.telemetry.instruments.per_chunk.record, ctx.metric_attributes
    previous: float | None = None

    def on_chunk(offset: float) -> None:
        nonlocal previous
        if previous is not None:
            record(offset - previous, attributes)
        previous = offset

    return on_chunk


def _record_metrics(ctx: RunContext, attempt: Attempt, base: dict[str, Any]) -> None:
    """Operation duration per attempt; first-chunk time and tokens on success."""
    instruments = ctx.telemetry.instruments
    done = attempt.completion
    attributes = dict(base)
    if attempt.error is not None:
        attributes["error.type"] = attempt.error.error_type
    elif done is not None and done.response_model:
        attributes["gen_ai.response.model"] = done.response_model
    instruments.duration.record(attempt.e2e_s, attributes)
    if attempt.error is not None or done is None:
        return
    if attempt.chunk_offsets:
        instruments.ttft.record(attempt.chunk_offsets[0], attributes)
    for kind, count in (("input", done.input_tokens), ("output", done.output_tokens)):
        if count is not None:
            instruments.tokens.record(count, {**attributes, "gen_ai.token.type": kind})


def _run_attributes(job: Job) -> dict[str, Any]:
    """The GenAI attributes every request span of the run carries."""
    req = job.request
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat" if req.api == "messages" else "text_completion",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": req.model,
        "gen_ai.request.max_tokens": req.max_tokens,
    }
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(req, name)
        if value is not None:
            attributes[f"gen_ai.request.{name}"] = value
    url = urlsplit(str(job.endpoint.base_url))
    if url.hostname:
        attributes["server.address"] = url.hostname
        attributes["server.port"] = url.port or (443 if url.scheme == "https" else 80)
    return attributes


def _end_span(
    span: trace.Span, ctx: RunContext, error: AttemptError | None, final: Attempt | None
) -> None:
    done = final.completion if final is not None else None
    if done is not None and error is None:
        if done.response_id:
            span.set_attribute("gen_ai.response.id", done.response_id)
        if done.response_model:
            span.set_attribute("gen_ai.response.model", done.response_model)
        if done.stop_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [done.stop_reason])
        if done.input_tokens is not None:
            span.set_attribute("gen_ai.usage.input_tokens", done.input_tokens)
        if done.output_tokens is not None:
            span.set_attribute("gen_ai.usage.output_tokens", done.output_tokens)
    if error is not None:
        span.set_attribute("error.type", error.error_type)
        span.set_status(Status(StatusCode.ERROR, error.message[:200]))
    end = final.ended_at if final is not None else ctx.clock.now()
    span.end(end_time=ctx.clock.epoch_ns(end))
