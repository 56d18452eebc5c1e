"""The ``file`` exporters of :mod:`batchrun.telemetry`: spans and metrics as OTLP JSON lines.

One export request per line, as the OpenTelemetry Collector's ``otlpjsonfile`` receiver reads
them: trace and span ids in hex, enums as integers, 64-bit integers as strings, fields left at
their default omitted. The requests are built as plain dicts straight from the SDK's spans and
metrics and written with msgspec: field for field what ``MessageToDict`` makes of the official
protobuf encoders' requests (``encode_spans``, ``encode_metrics``), which the tests hold them to,
without the protobuf round trip. Spans are written by a thread beside the event loop, and every
microsecond it holds the GIL is taken from the requests; the protobuf modules also took a while
to import. Loaded only when a job asks for ``telemetry.traces: file``, so that commands which
export nothing start quickly. It must not choose exporters (that is ``telemetry``'s) or see a
request header.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from opentelemetry.sdk.metrics.export import (
    ExponentialHistogram,
    Gauge,
    Histogram,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    Sum,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import Exemplar
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Buckets,
        ExponentialHistogramDataPoint,
        HistogramDataPoint,
        Metric,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import Link, SpanContext, Status

__all__ = ["OtlpJsonMetricFile", "OtlpJsonSpanFile"]

Json = dict[str, Any]

_logger = logging.getLogger(__name__)

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
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class _JsonLines:
    """Appends OTLP JSON export requests to a file, one per line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, request: Json) -> None:
        line = _encode(request) + b"\n"
        with self._lock, open(self.path, "ab") as fh:
            fh.write(line)


class OtlpJsonSpanFile(SpanExporter):
    """Spans as OTLP JSON lines (``traces.jsonl``)."""

    def __init__(self, path: Path) -> None:
        self._out = _JsonLines(path)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._out.write({"resourceSpans": _resource_spans(spans)})
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


class OtlpJsonMetricFile(MetricExporter):
    """Metrics as OTLP JSON lines (``metrics.jsonl``)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._out = _JsonLines(path)

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        if metrics_data.resource_metrics:
            self._out.write({"resourceMetrics": _resource_metrics(metrics_data)})
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


def _encode(request: Json) -> bytes:
    """msgspec's JSON; but a string holding a lone surrogate (text decoded with
    ``surrogateescape``) is no UTF-8, so that rare request goes through ``json.dumps``, whose
    ``\\udcxx`` escapes a JSON reader takes, rather than losing the whole batch."""
    try:
        return msgspec.json.encode(request)
    except UnicodeEncodeError:
        return json.dumps(request, separators=(",", ":")).encode()


# Spans: encode_spans of opentelemetry-exporter-otlp-proto-common, field for field.


def _resource_spans(spans: Sequence[ReadableSpan]) -> list[Json]:
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
        _with_schema_url(
            {
                "resource": _resource(resource),
                "scopeSpans": [
                    _with_schema_url(
                        {"scope": _scope(scope), "spans": encoded},
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
    out: Json = {"traceId": _trace_id(context.trace_id), "spanId": _span_id(context.span_id)}
    if context.trace_state:
        out["traceState"] = ",".join(f"{k}={v}" for k, v in context.trace_state.items())
    if parent is not None:
        out["parentSpanId"] = _span_id(parent.span_id)
    out["flags"] = _flags(parent)
    if span.name:
        out["name"] = span.name
    out["kind"] = _SPAN_KIND[span.kind]
    if span.start_time:
        out["startTimeUnixNano"] = str(span.start_time)
    if span.end_time:
        out["endTimeUnixNano"] = str(span.end_time)
    if attributes := span.attributes:
        out["attributes"] = _attributes(attributes)
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
        out["attributes"] = _attributes(event.attributes)
    if event.dropped_attributes:
        out["droppedAttributesCount"] = event.dropped_attributes
    return out


def _link(link: Link) -> Json:
    """A link has no trace state here: ``encode_spans`` leaves it out."""
    context = link.context
    out: Json = {"traceId": _trace_id(context.trace_id), "spanId": _span_id(context.span_id)}
    if link.attributes:
        out["attributes"] = _attributes(link.attributes)
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


def _trace_id(trace_id: int) -> str:
    return f"{trace_id:032x}"


def _span_id(span_id: int) -> str:
    return f"{span_id:016x}"


# Shared by spans and metrics: the common.v1 and resource.v1 messages.


def _with_schema_url(out: Json, schema_url: str | None) -> Json:
    if schema_url:
        out["schemaUrl"] = schema_url
    return out


def _resource(resource: Resource) -> Json:
    return {"attributes": _attributes(resource.attributes)} if resource.attributes else {}


def _scope(scope: InstrumentationScope | None) -> Json:
    """``{}`` for a span without one, as the encoder sends an empty scope."""
    out: Json = {}
    if scope is None:
        return out
    if scope.name:
        out["name"] = scope.name
    if scope.version:
        out["version"] = scope.version
    if scope.attributes:
        out["attributes"] = _attributes(scope.attributes)
    return out


def _attributes(attributes: Mapping[str, Any] | None) -> list[Json]:
    """As ``_encode_attributes``: a value that cannot be encoded (an integer beyond 64 bits, an
    unknown type) is logged and left out, rather than losing the whole request. The hottest loop
    of the module, so a plain string takes a shortcut."""
    out = []
    for key, value in (attributes or {}).items():
        try:
            encoded = {"stringValue": value} if type(value) is str else _any_value(value)
        except (TypeError, ValueError) as error:
            _logger.warning("Failed to encode key %s: %s", key, error)
            continue
        out.append({"key": key, "value": encoded} if key else {"value": encoded})
    return out


def _key_value(key: str, value: Any) -> Json:
    """A ``KeyValue``, whose empty key proto3 JSON leaves out like any default."""
    return {"key": key, "value": _any_value(value)} if key else {"value": _any_value(value)}


def _any_value(value: Any) -> Json:
    """An ``AnyValue``, tested in an order giving ``_encode_value``'s answers: bool before int,
    str and bytes before sequences."""
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": _int64(value)}
    if isinstance(value, float):
        return {"doubleValue": _double(value)}
    if value is None:
        return {}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode()}
    if isinstance(value, Sequence):
        values = [_any_value(v) for v in value]
        return {"arrayValue": {"values": values} if values else {}}
    if isinstance(value, Mapping):
        pairs = [_key_value(str(k), v) for k, v in value.items()]
        return {"kvlistValue": {"values": pairs} if pairs else {}}
    raise TypeError(f"Invalid type {type(value)} of value {value}")


def _int64(value: int) -> str:
    """A signed 64-bit integer, a string in proto3 JSON lest a reader round it to a double."""
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"Value out of range: {value}")
    return str(int(value))


def _double(value: float) -> float | str:
    """msgspec writes NaN and the infinities as ``null``; proto3 JSON spells them out."""
    value = float(value)
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


# Metrics: encode_metrics of opentelemetry-exporter-otlp-proto-common, field for field.


def _resource_metrics(data: MetricsData) -> list[Json]:
    """One entry per resource; a resource met twice keeps its first place and its last scopes,
    as in ``encode_metrics``. The SDK has already grouped the metrics by scope."""
    grouped: dict[Resource, ResourceMetrics] = {}
    for resource_metrics in data.resource_metrics:
        grouped[resource_metrics.resource] = resource_metrics
    return [
        _with_schema_url(
            {
                "resource": _resource(resource),
                "scopeMetrics": _scope_metrics(resource_metrics.scope_metrics),
            },
            resource.schema_url,
        )
        for resource, resource_metrics in grouped.items()
    ]


def _scope_metrics(scope_metrics: Sequence[ScopeMetrics]) -> list[Json]:
    grouped: dict[InstrumentationScope, ScopeMetrics] = {}
    for one in scope_metrics:
        grouped[one.scope] = one
    out = []
    for scope, one in grouped.items():
        encoded: Json = {"scope": _scope(scope)}
        if one.metrics:
            encoded["metrics"] = [_metric(metric) for metric in one.metrics]
        out.append(_with_schema_url(encoded, scope.schema_url))
    return out


def _metric(metric: Metric) -> Json:
    """A metric without data points has no data field at all, as ``encode_metrics`` only
    touches it while adding points."""
    out: Json = {"name": metric.name} if metric.name else {}
    if metric.description:
        out["description"] = metric.description
    if metric.unit:
        out["unit"] = metric.unit
    data = metric.data
    if not data.data_points:
        return out
    if isinstance(data, Gauge):
        out["gauge"] = {"dataPoints": [_number_point(p, start=False) for p in data.data_points]}
    elif isinstance(data, Histogram):
        out["histogram"] = _with_temporality(
            {"dataPoints": [_histogram_point(p) for p in data.data_points]},
            data.aggregation_temporality,
        )
    elif isinstance(data, Sum):
        out["sum"] = _with_temporality(
            {"dataPoints": [_number_point(p, start=True) for p in data.data_points]},
            data.aggregation_temporality,
        )
        if data.is_monotonic:
            out["sum"]["isMonotonic"] = True
    elif isinstance(data, ExponentialHistogram):
        out["exponentialHistogram"] = _with_temporality(
            {"dataPoints": [_exponential_point(p) for p in data.data_points]},
            data.aggregation_temporality,
        )
    else:
        _logger.warning("unsupported data type %s", type(data).__name__)
    return out


def _with_temporality(out: Json, temporality: AggregationTemporality) -> Json:
    if temporality.value:
        out["aggregationTemporality"] = temporality.value
    return out


def _number_point(point: NumberDataPoint, *, start: bool) -> Json:
    """A gauge's points carry no start time: ``encode_metrics`` leaves it out."""
    out = _point_base(
        point.attributes, point.start_time_unix_nano if start else 0, point.time_unix_nano
    )
    value = point.value
    if isinstance(value, int):
        out["asInt"] = _int64(value)
    else:
        out["asDouble"] = _double(value)
    return _with_exemplars(out, point.exemplars)


def _histogram_point(point: HistogramDataPoint) -> Json:
    out = _point_base(point.attributes, point.start_time_unix_nano, point.time_unix_nano)
    _add_count_and_sum(out, point.count, point.sum)
    if point.bucket_counts:
        out["bucketCounts"] = [str(n) for n in point.bucket_counts]
    if point.explicit_bounds:
        out["explicitBounds"] = [_double(b) for b in point.explicit_bounds]
    _add_min_max(out, point.min, point.max)
    return _with_exemplars(out, point.exemplars)


def _exponential_point(point: ExponentialHistogramDataPoint) -> Json:
    """Buckets only on the sides that have counts; no zero threshold: the encoder sets none."""
    out = _point_base(point.attributes, point.start_time_unix_nano, point.time_unix_nano)
    _add_count_and_sum(out, point.count, point.sum)
    if point.scale:
        out["scale"] = point.scale
    if point.zero_count:
        out["zeroCount"] = str(point.zero_count)
    if point.positive.bucket_counts:
        out["positive"] = _buckets(point.positive)
    if point.negative.bucket_counts:
        out["negative"] = _buckets(point.negative)
    if point.flags:
        out["flags"] = point.flags
    _add_min_max(out, point.min, point.max)
    return _with_exemplars(out, point.exemplars)


def _point_base(attributes: Mapping[str, Any] | None, start: int, time: int) -> Json:
    """What every kind of data point begins with."""
    out: Json = {"attributes": _attributes(attributes)} if attributes else {}
    if start:
        out["startTimeUnixNano"] = str(start)
    if time:
        out["timeUnixNano"] = str(time)
    return out


def _add_count_and_sum(out: Json, count: int, total: float | None) -> None:
    """The sum is an ``optional`` field: written whenever the SDK gives one, even 0."""
    if count:
        out["count"] = str(count)
    if total is not None:
        out["sum"] = _double(total)


def _add_min_max(out: Json, low: float | None, high: float | None) -> None:
    """``optional`` fields too, and the SDK's are infinite when it kept none."""
    if low is not None:
        out["min"] = _double(low)
    if high is not None:
        out["max"] = _double(high)


def _buckets(buckets: Buckets) -> Json:
    out: Json = {"offset": buckets.offset} if buckets.offset else {}
    out["bucketCounts"] = [str(n) for n in buckets.bucket_counts]
    return out


def _with_exemplars(out: Json, exemplars: Sequence[Exemplar]) -> Json:
    if exemplars:
        out["exemplars"] = [_exemplar(exemplar) for exemplar in exemplars]
    return out


def _exemplar(exemplar: Exemplar) -> Json:
    """Span and trace ids only when it has both, as ``_encode_exemplars`` writes them."""
    out: Json = {}
    if exemplar.filtered_attributes:
        out["filteredAttributes"] = _attributes(exemplar.filtered_attributes)
    if exemplar.time_unix_nano:
        out["timeUnixNano"] = str(exemplar.time_unix_nano)
    value = exemplar.value
    if isinstance(value, float):
        out["asDouble"] = _double(value)
    elif isinstance(value, int):
        out["asInt"] = _int64(value)
    else:
        raise ValueError("Exemplar value must be an int or float")
    if exemplar.span_id is not None and exemplar.trace_id is not None:
        out["spanId"] = _span_id(exemplar.span_id)
        out["traceId"] = _trace_id(exemplar.trace_id)
    return out
