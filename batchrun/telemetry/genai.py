"""A request's GenAI telemetry: its span, one child span per attempt, and its metrics.

Follows the OpenTelemetry GenAI client conventions (and their Anthropic page: the API's
``input_tokens`` is the uncached part, so ``gen_ai.usage.input_tokens`` adds the cache reads and
writes to it). :class:`RequestTelemetry` is made once per run (the attributes every request
shares, the link to the run's span; :meth:`RequestTelemetry.of` a variant's view, its model in
the attributes) and used by the stream driver for each request; it decides
nothing about a request and never sees a header or the key. Prompt and completion text reach a
span only with ``capture_content``.

With ``OTEL_SEMCONV_STABILITY_OPT_IN`` holding ``gen_ai_latest_experimental``, the newest
experimental names are emitted beside today's: the ``gen_ai.client.inference.usage.*`` token
counters (input, output, cache read, cache write, reasoning; ``gen_ai.token.modality``
``unknown``, as the API does not split by modality), the per-operation
``gen_ai.client.inference.operation.{input,output}_tokens`` histograms, and the span attributes
``gen_ai.request.stream`` and ``gen_ai.response.time_to_first_chunk``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode

import batchrun
from batchrun.clock import Clock
from batchrun.errors import AttemptError
from batchrun.job.request import RequestConfig
from batchrun.job.schema import Job
from batchrun.models import Attempt, Completion, RequestItem
from batchrun.telemetry.semconv import (
    LatestInstruments,
    latest_experimental,
    record_latest,
    request_attributes,
    total_input_tokens,
)
from batchrun.telemetry.setup import Telemetry

__all__ = ["RequestTelemetry"]

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


class RequestTelemetry:
    """Spans and metrics for the requests of one run."""

    def __init__(self, job: Job, telemetry: Telemetry, run_span: SpanContext, clock: Clock) -> None:
        self.tracer = telemetry.tracer
        self.instruments = telemetry.instruments
        self.latest = (
            LatestInstruments(telemetry.meter_provider.get_meter("batchrun", batchrun.__version__))
            if latest_experimental()
            else None
        )
        self.clock = clock
        self.capture_content = job.telemetry.capture_content
        self.links = [Link(run_span)]
        self._job = job
        self._views: dict[str, RequestTelemetry] = {}
        self._shared(job.effective_variants[0].request)

    def _shared(self, request: RequestConfig) -> None:
        # The same for every request of a variant: made once, not per request.
        self.span_attributes = _run_attributes(self._job, request)
        self.metric_attributes = {
            k: v for k, v in self.span_attributes.items() if k in _METRIC_KEYS
        }
        self.span_name = f"{self.span_attributes['gen_ai.operation.name']} {request.model}"

    def of(self, variant: str) -> RequestTelemetry:
        """This run's telemetry for the requests of ``variant``: its model and request keys in
        the attributes, the run's instruments and link."""
        view = self._views.get(variant)
        if view is None:
            view = copy.copy(self)
            view._shared(self._job.variant(variant).request)
            self._views[variant] = view
        return view

    def start(
        self, item: RequestItem, queued_at: float, body: Mapping[str, Any] | None = None
    ) -> trace.Span:
        """The request's span, from when it was queued. Each request is a trace of its own, so
        a row's trace_id finds just that request; the link leads to the run's span. ``body``
        (the request as sent) gives the ``gen_ai.request.*`` attributes of what it asks for."""
        attributes = {
            **self.span_attributes,
            **(request_attributes(body, latest=self.latest is not None) if body else {}),
            "batchrun.variant": item.variant,
            "batchrun.id": item.id,
            "batchrun.sample": item.sample,
        }
        if self.capture_content:
            attributes["gen_ai.input.messages"] = json.dumps(
                list(item.messages), ensure_ascii=False
            )
            if item.system:
                attributes["gen_ai.system_instructions"] = item.system
        return self.tracer.start_span(
            self.span_name,
            kind=SpanKind.CLIENT,
            context=_NO_PARENT,
            links=self.links,
            start_time=self.clock.epoch_ns(queued_at),
            attributes=attributes,
        )

    @contextmanager
    def attempt_span(self, number: int, backoff_s: float) -> Iterator[trace.Span]:
        """The current request's child span for one attempt (see :meth:`annotate`)."""
        with self.tracer.start_as_current_span(
            f"attempt {number}",
            kind=SpanKind.INTERNAL,
            attributes={"batchrun.attempt": number, "batchrun.backoff_s": backoff_s},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span

    def annotate(self, span: trace.Span, attempt: Attempt) -> None:
        """An attempt's span: its status code, request-id, first token and error."""
        if attempt.http_status is not None:
            span.set_attribute("http.response.status_code", attempt.http_status)
        if attempt.request_id is not None:
            span.set_attribute("anthropic.request_id", attempt.request_id)
        if attempt.ttft_s is not None:
            span.add_event(
                "gen_ai.first_token",
                timestamp=self.clock.epoch_ns(attempt.sent_at + attempt.ttft_s),
            )
        if attempt.error is not None:
            span.set_attribute("error.type", attempt.error.error_type)
            if attempt.error.retry_after is not None:
                span.set_attribute("batchrun.retry_after_s", attempt.error.retry_after)
            span.set_status(Status(StatusCode.ERROR, attempt.error.message[:200]))

    def chunk_recorder(self) -> Callable[[float], None]:
        """Records the time per output chunk as each chunk arrives.

        A chunk is what arrived in one read. Recording each at its arrival, rather than all of
        an attempt's at its end, keeps the event loop free of a burst of metric calls (each
        costs the SDK ~7 µs; a wave of streams ending together made the next wave's first
        tokens late). The attributes are the run's: the outcome (``error.type``) is not known
        yet.
        """
        record, attributes = self.instruments.per_chunk.record, self.metric_attributes
        previous: float | None = None

        def on_chunk(offset: float) -> None:
            nonlocal previous
            if previous is not None:
                record(offset - previous, attributes)
            previous = offset

        return on_chunk

    def attempt_metrics(self, attempt: Attempt) -> None:
        """Operation duration per attempt; first-chunk time and tokens on success."""
        instruments = self.instruments
        done = attempt.completion
        attributes = dict(self.metric_attributes)
        if attempt.error is not None:
            attributes["error.type"] = attempt.error.error_type
        elif done is not None and done.response_model:
            attributes["gen_ai.response.model"] = done.response_model
        instruments.duration.record(attempt.e2e_s, attributes)
        if attempt.error is not None or done is None:
            return
        if attempt.chunk_offsets:
            instruments.ttft.record(attempt.chunk_offsets[0], attributes)
        input_total = total_input_tokens(done)
        for kind, count in (("input", input_total), ("output", done.output_tokens)):
            if count is not None:
                instruments.tokens.record(count, {**attributes, "gen_ai.token.type": kind})
        if self.latest is not None:
            record_latest(self.latest, done, input_total, attributes)

    def retried(self, error: AttemptError) -> None:
        self.instruments.retries.add(1, {**self.metric_attributes, "error.type": error.error_type})

    def failed(self, error: AttemptError) -> None:
        self.instruments.errors.add(1, {**self.metric_attributes, "error.type": error.error_type})

    def end(
        self,
        span: trace.Span,
        error: AttemptError | None,
        final: Attempt | None,
        cost_usd: float | None = None,
    ) -> None:
        """End the request's span when its last attempt ended, with the response's facts and
        its cost (``batchrun.cost_usd``, the row's)."""
        done = final.completion if final is not None else None
        if done is not None and error is None:
            _response_attributes(span, done, self.capture_content)
            if cost_usd is not None:
                span.set_attribute("batchrun.cost_usd", cost_usd)
            if self.latest is not None and final is not None and final.ttft_s is not None:
                span.set_attribute("gen_ai.response.time_to_first_chunk", final.ttft_s)
        if error is not None:
            span.set_attribute("error.type", error.error_type)
            span.set_status(Status(StatusCode.ERROR, error.message[:200]))
        end = final.ended_at if final is not None else self.clock.now()
        span.end(end_time=self.clock.epoch_ns(end))


def _response_attributes(span: trace.Span, done: Completion, capture_content: bool) -> None:
    if done.response_id:
        span.set_attribute("gen_ai.response.id", done.response_id)
    if done.response_model:
        span.set_attribute("gen_ai.response.model", done.response_model)
    if done.stop_reason:
        span.set_attribute("gen_ai.response.finish_reasons", [done.stop_reason])
    input_total = total_input_tokens(done)
    if input_total is not None:
        span.set_attribute("gen_ai.usage.input_tokens", input_total)
    if done.output_tokens is not None:
        span.set_attribute("gen_ai.usage.output_tokens", done.output_tokens)
    for name, value in (
        ("gen_ai.usage.cache_read.input_tokens", done.cache_read_input_tokens),
        ("gen_ai.usage.cache_creation.input_tokens", done.cache_creation_input_tokens),
        ("gen_ai.usage.reasoning.output_tokens", done.reasoning_output_tokens),
        ("anthropic.response.service_tier", done.service_tier),
    ):
        if value is not None:
            span.set_attribute(name, value)
    if capture_content:
        span.set_attribute(
            "gen_ai.output.messages",
            json.dumps([{"role": "assistant", "content": done.text}], ensure_ascii=False),
        )


def _run_attributes(job: Job, req: RequestConfig) -> dict[str, Any]:
    """The GenAI attributes every request span of a variant (asking ``req``) carries."""
    api = req.api_spec
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": api.operation,
        "gen_ai.provider.name": api.provider,
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
