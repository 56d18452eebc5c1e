"""The ``file`` exporters write, field for field, what the official protobuf encoders send.

The reference is ``MessageToDict`` of ``encode_spans`` / ``encode_metrics`` with the trace and
span ids turned from base64 into the hex that OTLP JSON wants: any field that differs fails.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from batchrun.telemetry.otlp.file import OtlpJsonMetricFile, OtlpJsonSpanFile

_ID_KEYS = {"traceId", "spanId", "parentSpanId"}

# One of each kind of attribute value, with the defaults proto3 JSON could drop (0, "", False)
# and integers past 2**53 that only survive as strings.
ATTRIBUTES: dict[str, Any] = {
    "str": "chat claude",
    "empty": "",
    "bool": True,
    "false": False,
    "int": 42,
    "zero": 0,
    "negative": -7,
    "big": 2**62 + 1,
    "int64.min": -(2**63),
    "float": 0.25,
    "whole.float": 3.0,
    "inf": float("inf"),
    "minus.inf": float("-inf"),
    "nan": float("nan"),
    "strs": ["a", "", "c"],
    "bools": [True, False],
    "ints": [1, 2**60, -3],
    "floats": [1.5, -0.0],
    "empty.seq": [],
    "bytes": b"\x00\xffbin",
    "mapping": {"inner": 1, "nested": {"deep": ["x"]}},
    "with.none": ["a", None],
}


def _hex_ids(node: Any) -> Any:
    """The reference's ids are base64, as proto3 JSON writes bytes; OTLP JSON wants hex."""
    if isinstance(node, dict):
        return {
            k: base64.b64decode(v).hex() if k in _ID_KEYS else _hex_ids(v) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_hex_ids(v) for v in node]
    return node


def _reference(request: Message) -> Any:
    return _hex_ids(MessageToDict(request, use_integers_for_enums=True))


def _lines(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class Spans:
    """A tracer provider whose finished spans are kept in memory, as the exporter gets them."""

    def __init__(self, resource: Resource, limits: SpanLimits | None = None) -> None:
        self.memory = InMemorySpanExporter()
        self.provider = TracerProvider(resource=resource, span_limits=limits)
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))

    def finished(self) -> list[ReadableSpan]:
        return list(self.memory.get_finished_spans())


@pytest.fixture
def spans() -> Iterator[Spans]:
    made = Spans(Resource.create({"service.name": "batchrun", "batchrun.job": "t"}))
    yield made
    made.provider.shutdown()


def _remote(trace_id: int, span_id: int, state: TraceState | None = None) -> SpanContext:
    return SpanContext(trace_id, span_id, True, TraceFlags(TraceFlags.SAMPLED), state)


def _batchrun_like_spans(spans: Spans) -> list[ReadableSpan]:
    """A run span, a CLIENT request span linked to it with an INTERNAL attempt child that has
    an event and an error, spans of every other kind, and spans under remote parents."""
    tracer = spans.provider.get_tracer("batchrun", "1.2.3")
    other = spans.provider.get_tracer(
        "other.scope", schema_url="https://opentelemetry.io/schemas/1.26.0"
    )
    with tracer.start_as_current_span("batchrun run") as run:
        run.set_status(Status(StatusCode.OK))
    request = tracer.start_span(
        "chat claude",
        kind=SpanKind.CLIENT,
        attributes=ATTRIBUTES,
        links=[Link(run.get_span_context(), {"link.str": "x", "link.int": 2**53 + 1})],
        context=trace.set_span_in_context(trace.INVALID_SPAN),
    )
    with trace.use_span(request, end_on_exit=True):
        with tracer.start_as_current_span("attempt", kind=SpanKind.INTERNAL) as attempt:
            attempt.add_event("gen_ai.first_chunk", {"n": 1, "ok": True, "at": 0.5})
            attempt.add_event("bare")
            attempt.set_status(Status(StatusCode.ERROR, "overloaded_error: try again"))
        request.set_attribute("too.big", 2**70)  # past int64: dropped, as the encoder does
    for kind in (SpanKind.SERVER, SpanKind.PRODUCER, SpanKind.CONSUMER):
        other.start_span(f"kind {kind.name}", kind=kind).end()
    remote = _remote(0xABC, 0xDEF, TraceState([("vendor", "v1"), ("other", "x")]))
    parent = trace.set_span_in_context(NonRecordingSpan(remote))
    with other.start_as_current_span("under a remote parent", context=parent, links=[Link(remote)]):
        pass
    with other.start_as_current_span("unnamed status", context=parent) as unset:
        unset.set_status(Status(StatusCode.ERROR))
    return spans.finished()


def _assert_matches_encode_spans(path: Path, batch: Sequence[ReadableSpan]) -> None:
    (line,) = _lines(path)
    assert line == _reference(encode_spans(batch))


def test_spans_match_the_official_encoder(spans: Spans, tmp_path: Path) -> None:
    """Every attribute type, events, links, kinds, status, parents local and remote, two
    scopes: the line equals MessageToDict(encode_spans(...)) with hex ids."""
    batch = _batchrun_like_spans(spans)
    path = tmp_path / "traces.jsonl"
    OtlpJsonSpanFile(path).export(batch)
    _assert_matches_encode_spans(path, batch)
    request = next(s for s in _lines(path)[0]["resourceSpans"][0]["scopeSpans"][0]["spans"])
    assert request["name"] == "batchrun run"
    line = path.read_text()
    assert '"stringValue":"chat claude"' in line
    assert f'"intValue":"{2**62 + 1}"' in line
    assert '"doubleValue":"Infinity"' in line
    assert "too.big" not in line


def test_spans_keep_the_encoders_grouping_by_resource_and_scope(tmp_path: Path) -> None:
    """Spans of two resources and two scopes, interleaved, fall into the same groups in the
    same order as encode_spans puts them, and equal resources are one group."""
    first = Spans(Resource.create({"service.name": "a"}))
    second = Spans(Resource.create({"service.name": "b"}, schema_url="https://example.com/s"))
    again = Spans(Resource.create({"service.name": "a"}))  # equal to first, another object
    for provider in (first, second, again):
        for scope in ("x", "y"):
            provider.provider.get_tracer(scope).start_span(f"{scope} span").end()
    a, b, c = first.finished(), second.finished(), again.finished()
    batch = [a[1], b[0], a[0], c[1], b[1], c[0]]
    path = tmp_path / "traces.jsonl"
    OtlpJsonSpanFile(path).export(batch)
    _assert_matches_encode_spans(path, batch)
    assert len(_lines(path)[0]["resourceSpans"]) == 2


def test_dropped_counts_are_written_when_the_limits_bite(tmp_path: Path) -> None:
    limits = SpanLimits(max_span_attributes=2, max_events=1, max_links=1, max_event_attributes=1)
    capped = Spans(Resource.create({}), limits)
    links = [Link(_remote(1, 2)), Link(_remote(3, 4), {"a": 1, "b": 2})]
    with capped.provider.get_tracer("t").start_as_current_span("capped", links=links) as span:
        span.set_attributes({"a": 1, "b": 2, "c": 3})
        span.add_event("dropped")
        span.add_event("kept", {"a": 1, "b": 2})  # the newest events are kept
    batch = capped.finished()
    path = tmp_path / "traces.jsonl"
    OtlpJsonSpanFile(path).export(batch)
    _assert_matches_encode_spans(path, batch)
    (written,) = _lines(path)[0]["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert written["droppedAttributesCount"] == 1
    assert written["droppedEventsCount"] == 1
    assert written["droppedLinksCount"] == 1
    assert written["events"][0]["droppedAttributesCount"] == 1


def test_each_export_is_one_line_appended(spans: Spans, tmp_path: Path) -> None:
    tracer = spans.provider.get_tracer("t")
    path = tmp_path / "traces.jsonl"
    exporter = OtlpJsonSpanFile(path)
    for name in ("one", "two"):
        tracer.start_span(name).end()
        exporter.export(spans.finished()[-1:])
    names = [line["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["name"] for line in _lines(path)]
    assert names == ["one", "two"]


def test_a_lone_surrogate_does_not_lose_the_batch(spans: Spans, tmp_path: Path) -> None:
    """Text decoded with surrogateescape is no UTF-8; the line is still written, escaped."""
    with spans.provider.get_tracer("t").start_as_current_span("s") as span:
        span.set_attribute("text", "bad \udcff byte")
    path = tmp_path / "traces.jsonl"
    OtlpJsonSpanFile(path).export(spans.finished())
    (line,) = _lines(path)
    (attribute,) = line["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"]
    assert attribute == {"key": "text", "value": {"stringValue": "bad \udcff byte"}}


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 kB tmpfs, for a disk that really fills up (mounting needs root, as in CI)."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is a real tmpfs here, and mounting one needs root")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_write_that_fills_the_disk_leaves_no_torn_line(spans: Spans, small_tmpfs: Path) -> None:
    """An export that meets ENOSPC part-way is cut back; once space is back every line parses."""
    tracer = spans.provider.get_tracer("t")
    path = small_tmpfs / "traces.jsonl"
    exporter = OtlpJsonSpanFile(path)
    tracer.start_span("before").end()
    assert exporter.export(spans.finished()[-1:]) == SpanExportResult.SUCCESS
    filler = small_tmpfs / "filler"
    with open(filler, "wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:  # take all the space, then give a little back
            fh.write(b"x" * 4096)
    os.truncate(filler, filler.stat().st_size - 8192)
    with tracer.start_as_current_span("too big") as span:
        span.set_attribute("text", "y" * 40_000)
    assert exporter.export(spans.finished()[-1:]) == SpanExportResult.FAILURE
    assert path.read_bytes().endswith(b"\n")
    filler.unlink()
    tracer.start_span("after").end()
    assert exporter.export(spans.finished()[-1:]) == SpanExportResult.SUCCESS
    names = [line["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["name"] for line in _lines(path)]
    assert names == ["before", "after"]


def test_a_line_torn_by_a_killed_process_is_not_continued(spans: Spans, tmp_path: Path) -> None:
    """A file ending mid-line (a process killed while writing): the next line starts anew."""
    path = tmp_path / "traces.jsonl"
    path.write_bytes(b'{"resourceSpans":[{"resou')
    spans.provider.get_tracer("t").start_span("next").end()
    OtlpJsonSpanFile(path).export(spans.finished())
    torn, whole = path.read_bytes().splitlines()
    assert torn == b'{"resourceSpans":[{"resou'
    assert json.loads(whole)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["name"] == "next"


def test_a_planted_symlink_is_not_followed(spans: Spans, tmp_path: Path) -> None:
    """traces.jsonl as a symbolic link to another file: the export fails, the file is untouched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (tmp_path / "traces.jsonl").symlink_to(victim)
    spans.provider.get_tracer("t").start_span("s").end()
    assert OtlpJsonSpanFile(tmp_path / "traces.jsonl").export(spans.finished()) == (
        SpanExportResult.FAILURE
    )
    assert victim.read_text() == "keep me\n"


def _metrics_data() -> MetricsData:
    """Counters int and float, an up-down counter, a gauge, an explicit and an exponential
    histogram, with attributes, and exemplars (recorded inside a sampled span)."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        resource=Resource.create({"service.name": "batchrun"}),
        metric_readers=[reader],
        views=[
            View(instrument_name="exp", aggregation=ExponentialBucketHistogramAggregation()),
            View(instrument_name="*"),
        ],
    )
    meter = provider.get_meter("batchrun", "1.2.3")
    spans = Spans(Resource.create({}))
    with spans.provider.get_tracer("t").start_as_current_span("sampled"):
        meter.create_counter("requests").add(3, {"status": "ok", "big": 2**60})
        meter.create_counter("cost", unit="USD", description="spent").add(0.125)
        meter.create_up_down_counter("in_flight").add(-2)
        meter.create_gauge("queue").set(7, {"pool": "a"})
        meter.create_gauge("ratio").set(0.5)
        latency = meter.create_histogram("latency", unit="s")
        for value, model in ((0.2, "a"), (12.0, "a"), (3.0, "b")):
            latency.record(value, {"gen_ai.request.model": model})
        meter.create_histogram("tokens").record(120)
        exp = meter.create_histogram("exp")
        for value in (0.0, 1.5, 40.0, -3.0):
            exp.record(value, {"side": "both"})
    meter.create_counter("never")  # no points: no data field
    provider.get_meter("other.scope").create_counter("other").add(1)
    data = reader.get_metrics_data()
    assert data is not None
    provider.shutdown()
    spans.provider.shutdown()
    return data


def test_metrics_match_the_official_encoder(tmp_path: Path) -> None:
    data = _metrics_data()
    path = tmp_path / "metrics.jsonl"
    OtlpJsonMetricFile(path).export(data)
    (line,) = _lines(path)
    assert line == _reference(encode_metrics(data))
    text = path.read_text()
    for field in ('"exponentialHistogram"', '"exemplars"', '"isMonotonic":true', '"asInt":"3"'):
        assert field in text


def test_metrics_keep_the_encoders_grouping(tmp_path: Path) -> None:
    """A resource or a scope met twice keeps its first place and its last contents, as in
    encode_metrics (the SDK never sends that, but the line must still equal the encoder's)."""
    (first,) = _metrics_data().resource_metrics
    scopes = list(first.scope_metrics)
    later_scope = ScopeMetrics(scopes[0].scope, scopes[1].metrics, "https://example.com/s")
    other = Resource.create({"service.name": "other"}, schema_url="https://example.com/r")
    data = MetricsData(
        resource_metrics=[
            first,
            ResourceMetrics(other, scopes[:1], ""),
            ResourceMetrics(
                Resource.create({"service.name": "batchrun"}), [*scopes, later_scope], ""
            ),
        ]
    )
    path = tmp_path / "metrics.jsonl"
    OtlpJsonMetricFile(path).export(data)
    (line,) = _lines(path)
    assert line == _reference(encode_metrics(data))
    assert len(line["resourceMetrics"]) == 2


def test_no_metrics_no_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    OtlpJsonMetricFile(path).export(MetricsData(resource_metrics=[]))
    assert not path.exists()
