"""The ``file`` exporters of :mod:`batchrun.telemetry`: spans and metrics as OTLP JSON lines.

One export request per line, as the OpenTelemetry Collector's ``otlpjsonfile`` receiver reads
them: trace and span ids in hex, enums as integers, 64-bit integers as strings. Loaded only when a
job asks for ``telemetry.traces: file``, so that commands which export nothing start quickly.
It must not choose exporters (that is ``telemetry``'s) or see a request header.
"""

from __future__ import annotations

import base64
import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = ["OtlpJsonMetricFile", "OtlpJsonSpanFile"]

_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId"})
_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
        FieldDescriptor.TYPE_SINT64,
    }
)


class _JsonLines:
    """Appends OTLP JSON export requests to a file, one per line, as the Collector's
    ``otlpjsonfile`` receiver reads them (ids in hex, enums as integers)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, request: Message) -> None:
        line = json.dumps(_json_object(request), separators=(",", ":")) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)


class OtlpJsonSpanFile(SpanExporter):
    """Spans as OTLP JSON lines (``traces.jsonl``)."""

    def __init__(self, path: Path) -> None:
        self._out = _JsonLines(path)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._out.write(encode_spans(spans))
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
            self._out.write(encode_metrics(metrics_data))
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


def _json_object(message: Message) -> dict[str, Any]:
    """``MessageToDict(message, use_integers_for_enums=True)`` with trace and span ids in hex, as
    OTLP JSON wants them; several times faster, since spans are written while the run goes on.

    Proto3 JSON: fields left at their default are omitted (``ListFields`` lists only the others),
    64-bit integers are strings, other bytes are base64, enums are their numbers.
    """
    return {
        field.json_name: [_json_value(field, item) for item in value]
        if field.is_repeated
        else _json_value(field, value)
        for field, value in message.ListFields()
    }


def _json_value(field: FieldDescriptor, value: Any) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return _json_object(value)
    if kind in _INT64:
        return str(value)
    if kind == FieldDescriptor.TYPE_BYTES:
        return value.hex() if field.json_name in _ID_KEYS else base64.b64encode(value).decode()
    if kind == FieldDescriptor.TYPE_DOUBLE and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value
