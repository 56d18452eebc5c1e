"""The ``file`` exporters of :mod:`batchrun.telemetry`: spans and metrics as OTLP JSON lines.

One export request per line, as the OpenTelemetry Collector's ``otlpjsonfile`` receiver reads
them: trace and span ids in hex, enums as integers, 64-bit integers as strings, fields left at
their default omitted. The requests are built as plain dicts straight from the SDK's spans and
metrics (:mod:`batchrun.otlpspans`, :mod:`batchrun.otlpmetrics`, on the shared pieces of
:mod:`batchrun.otlpjson`) and written here with msgspec: field for field what ``MessageToDict``
makes of the official protobuf encoders' requests (``encode_spans``, ``encode_metrics``), which
the tests hold them to, without the protobuf round trip. Spans are written by a thread beside the
event loop, and every microsecond it holds the GIL is taken from the requests; the protobuf
modules also took a while to import. Loaded only when a job asks for ``telemetry.traces: file``,
so that commands which export nothing start quickly. It must not choose exporters (that is
``telemetry``'s), build the OTLP fields itself (that is the encoders') or see a request header.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import structlog
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from batchrun.telemetry.otlp.encode import Json
from batchrun.telemetry.otlp.metrics import resource_metrics
from batchrun.telemetry.otlp.spans import resource_spans

__all__ = ["OtlpJsonMetricFile", "OtlpJsonSpanFile"]

log = structlog.get_logger()


class _JsonLines:
    """Appends OTLP JSON export requests to a file, one per line, never leaving a torn one.

    A write that fails part-way (the disk filled up) is cut back to where it began; if even
    that fails, or a killed process left a torn line, the next write starts on a new line, so a
    torn line is never continued. The file is opened without following a symbolic link.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._failing = False

    def write(self, request: Json) -> bool:
        """Append one line; ``False`` (and one warning per run of failures) when it failed."""
        line = _encode(request) + b"\n"
        with self._lock:
            try:
                _append_whole(self.path, line)
            except OSError as exc:
                if not self._failing:
                    log.warning(
                        "batchrun.telemetry.write_failed", path=str(self.path), error=str(exc)
                    )
                self._failing = True
                return False
            self._failing = False
            return True


def _append_whole(path: Path, line: bytes) -> None:
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        start = os.fstat(fd).st_size
        if start and os.pread(fd, 1, start - 1) != b"\n":
            line = b"\n" + line  # a torn line before this one: end it, never continue it
        view = memoryview(line)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):  # could not cut it back: the next write copes
                os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


class OtlpJsonSpanFile(SpanExporter):
    """Spans as OTLP JSON lines (``traces.jsonl``)."""

    def __init__(self, path: Path) -> None:
        self._out = _JsonLines(path)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._out.write({"resourceSpans": resource_spans(spans)}):
            return SpanExportResult.SUCCESS
        return SpanExportResult.FAILURE

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
        if metrics_data.resource_metrics and not self._out.write(
            {"resourceMetrics": resource_metrics(metrics_data)}
        ):
            return MetricExportResult.FAILURE
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
