"""Spans as OTLP JSON, field for field what the OTLP exporters' ``encode_spans`` builds.

Turns the SDK's finished spans into the ``resourceSpans`` of an export request, as plain dicts
(see :mod:`batchrun.otlpjson` for how each field is spelled). Runs on the span export thread
beside the event loop, so it reads each of a span's collections once. Pure: it must not write
files, choose exporters or import the protobuf modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from opentelemetry.trace import SpanKind

from batchrun.telemetry.otlp import encode as otlpjson
from batchrun.telemetry.otlp.encode import Json

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import Link, SpanContext, Status

__all__ = ["resource_spans"]

# The SDK numbers span kinds from 0; OTLP from 1, 0 being SPAN_KIND_UNSPECIFIED.
_SPAN_KIND = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}
# Span.flags and Link.flags: bit 8 says whether the other context is remote is known, bit 9 that
# it is. The encoder sets no W3C trace flags in bits 0-7, and neither does this module.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200


def resource_spans(spans: Sequence[ReadableSpan]) -> list[Json]:
    """Grouped by resource, then by instrumentation scope, in order of first appearance, as
    ``encode_spans`` groups them. A resource hashes by dumping its attributes to JSON, so spans
    sharing one resource object (all of a run's do) look it up once, not once each."""
    grouped: dict[Resource, dict[InstrumentationScope | None, list[Json]]] = {}
    last: Resource | None = None
    last_scopes: dict[InstrumentationScope | None, list[Json]] = {}
    for span in spans:
        if span.resource is not last:
            last = span.resource
            last_scopes = grouped.setdefault(last, {})
        last_scopes.setdefault(span.instrumentation_scope or None, []).append(_span(span))
    return [
        otlpjson.with_schema_url(
            {
                "resource": otlpjson.resource(resource),
                "scopeSpans": [
                    otlpjson.with_schema_url(
                        {"scope": otlpjson.scope(scope), "spans": encoded},
                        scope.schema_url if scope else None,
                    )
                    for scope, encoded in scopes.items()
                ],
            },
            resource.schema_url,
        )
        for resource, scopes in grouped.items()
    ]


def _span(span: ReadableSpan) -> Json:
    """Each of the span's collections is read once: the SDK copies them on every read."""
    context: SpanContext = span.context
    parent = span.parent
    out: Json = {
        "traceId": otlpjson.trace_id(context.trace_id),
        "spanId": otlpjson.span_id(context.span_id),
    }
    if context.trace_state:
        out["traceState"] = ",".join(f"{k}={v}" for k, v in context.trace_state.items())
    if parent is not None:
        out["parentSpanId"] = otlpjson.span_id(parent.span_id)
    out["flags"] = _flags(parent)
    if span.name:
        out["name"] = span.name
    out["kind"] = _SPAN_KIND[span.kind]
    if span.start_time:
        out["startTimeUnixNano"] = str(span.start_time)
    if span.end_time:
        out["endTimeUnixNano"] = str(span.end_time)
    if attributes := span.attributes:
        out["attributes"] = otlpjson.attributes(attributes)
    if dropped := span.dropped_attributes:
        out["droppedAttributesCount"] = dropped
    if events := span.events:
        out["events"] = [_event(event) for event in events]
    if dropped := span.dropped_events:
        out["droppedEventsCount"] = dropped
    if links := span.links:
        out["links"] = [_link(link) for link in links]
    if dropped := span.dropped_links:
        out["droppedLinksCount"] = dropped
    out["status"] = _status(span.status)
    return out


def _flags(other: SpanContext | None) -> int:
    """Whether the parent (or the linked span) lives in another process, which OTLP keeps in
    ``flags`` and ``encode_spans`` always states."""
    return _HAS_IS_REMOTE | _IS_REMOTE if other is not None and other.is_remote else _HAS_IS_REMOTE


def _event(event: Event) -> Json:
    out: Json = {}
    if event.timestamp:
        out["timeUnixNano"] = str(event.timestamp)
    if event.name:
        out["name"] = event.name
    if event.attributes:
        out["attributes"] = otlpjson.attributes(event.attributes)
    if event.dropped_attributes:
        out["droppedAttributesCount"] = event.dropped_attributes
    return out


def _link(link: Link) -> Json:
    """A link has no trace state here: ``encode_spans`` leaves it out."""
    context = link.context
    out: Json = {
        "traceId": otlpjson.trace_id(context.trace_id),
        "spanId": otlpjson.span_id(context.span_id),
    }
    if link.attributes:
        out["attributes"] = otlpjson.attributes(link.attributes)
    if link.dropped_attributes:
        out["droppedAttributesCount"] = link.dropped_attributes
    out["flags"] = _flags(context)
    return out


def _status(status: Status) -> Json:
    """Always present, ``{}`` when unset: the encoder sets the message even when it is empty."""
    out: Json = {}
    if status.description:
        out["message"] = status.description
    code = status.status_code.value
    if code:
        out["code"] = code
    return out
