"""Traces, metrics and logs: the span tree, GenAI attributes, exporters, and no secrets."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from batchrun.job.schema import load_job
from batchrun.run import run_job
from batchrun.sim import SimServer
from batchrun.telemetry.setup import setup_telemetry
from tests.conftest import JobWriter, no_sleep

StartSim = Callable[..., SimServer]
SECRET = "sk-ant-api03-RECOGNISABLE-SECRET-0123456789"


class Captured:
    def __init__(self, tmp_path: Path) -> None:
        self.spans = InMemorySpanExporter()
        self.metrics = InMemoryMetricReader()
        self.telemetry = setup_telemetry(
            "none",
            job_name="t",
            run_dir=tmp_path,
            span_exporter=self.spans,
            metric_reader=self.metrics,
        )

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def metric_names(self) -> dict[str, Any]:
        data = self.metrics.get_metrics_data()
        assert data is not None
        return {
            m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        }


@pytest.fixture
def captured(tmp_path: Path) -> Iterator[Captured]:
    c = Captured(tmp_path)
    yield c
    c.telemetry.shutdown()


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


async def _run(
    write_job: JobWriter, server: SimServer, captured: Captured, **extra: Any
) -> pl.DataFrame:
    extra.setdefault("endpoint", {})["base_url"] = server.base_url
    job = load_job(write_job(rows=extra.pop("rows", 1), extra=extra))
    outcome = await run_job(job, sleep=no_sleep, telemetry=captured.telemetry)
    return pl.read_parquet(outcome.run_dir / "results.parquet")


def _by_name(spans: list[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        out.setdefault(span.name, []).append(span)
    return out


@pytest.mark.parametrize(
    ("api", "operation"), [("messages", "chat"), ("complete", "text_completion")]
)
async def test_a_clean_request_is_a_client_span_with_genai_attributes(
    write_job: JobWriter, sim_server: StartSim, captured: Captured, api: str, operation: str
) -> None:
    """Run span, one CLIENT span per request in its own trace (linked to the run), one attempt
    child with the HTTP status, request-id and a first-token event."""
    server = sim_server()
    # temperature: a model that takes it, on the version that has it.
    asked = {"api": api, "model": "claude-haiku-4-5", "temperature": 0.5}
    endpoint = {"anthropic_version": "2023-06-01"}
    results = await _run(write_job, server, captured, request=asked, endpoint=endpoint)
    spans = _by_name(captured.finished())
    (run,) = spans["batchrun.run"]
    (request,) = spans[f"{operation} claude-haiku-4-5"]
    (attempt,) = spans["attempt 1"]
    assert request.kind == SpanKind.CLIENT
    attrs = dict(request.attributes or {})
    assert attrs["gen_ai.operation.name"] == operation
    assert attrs["gen_ai.provider.name"] == "anthropic"
    assert attrs["gen_ai.request.model"] == "claude-haiku-4-5"
    assert attrs["gen_ai.request.max_tokens"] == 64
    assert attrs["gen_ai.request.temperature"] == 0.5
    assert attrs["server.address"] == "127.0.0.1"
    assert isinstance(attrs["server.port"], int)
    assert attrs["gen_ai.response.finish_reasons"] in (
        ("end_turn",),
        ("max_tokens",),
        ("stop_sequence",),
    )
    assert "error.type" not in attrs
    if api == "messages":
        assert str(attrs["gen_ai.response.id"]).startswith("msg_")
        assert attrs["gen_ai.usage.output_tokens"] == results["output_tokens"][0]
        assert attrs["gen_ai.usage.input_tokens"] == results["input_tokens"][0]
    assert format(request.context.trace_id, "032x") == results["trace_id"][0]
    assert request.context.trace_id != run.context.trace_id
    assert [link.context.span_id for link in request.links] == [run.context.span_id]
    assert attempt.parent is not None
    assert attempt.parent.span_id == request.context.span_id
    assert dict(attempt.attributes or {})["http.response.status_code"] == 200
    assert str(dict(attempt.attributes or {})["anthropic.request_id"]) == results["request_id"][0]
    assert [e.name for e in attempt.events] == ["gen_ai.first_token"]
    assert request.start_time is not None
    assert request.end_time is not None
    assert request.start_time <= attempt.start_time <= attempt.events[0].timestamp  # type: ignore[operator]
    assert dict(run.attributes or {})["batchrun.rows.ok"] == 1
    assert "gen_ai.input.messages" not in attrs


async def test_a_retried_request_has_one_child_per_attempt(
    write_job: JobWriter, sim_server: StartSim, captured: Captured
) -> None:
    """An overload mid-stream then a success: two attempt spans, the first with error.type."""
    server = sim_server(faults=[{"kind": "overloaded_midstream", "attempts": [1]}])
    await _run(write_job, server, captured)
    spans = _by_name(captured.finished())
    first, second = spans["attempt 1"][0], spans["attempt 2"][0]
    assert dict(first.attributes or {})["error.type"] == "overloaded_error"
    assert first.status.status_code == StatusCode.ERROR
    assert "error.type" not in dict(second.attributes or {})
    assert dict(second.attributes or {})["batchrun.backoff_s"] > 0
    (request,) = spans["chat claude-sonnet-5-5"]
    assert "error.type" not in dict(request.attributes or {})
    metrics = captured.metric_names()
    retries = metrics["batchrun.client.retries"].data.data_points
    assert [(dict(p.attributes)["error.type"], p.value) for p in retries] == [
        ("overloaded_error", 1)
    ]


async def test_a_failed_request_carries_error_type(
    write_job: JobWriter, sim_server: StartSim, captured: Captured
) -> None:
    """A 400: the request span has error.type and an error status; the errors counter counts it."""
    server = sim_server(faults=[{"kind": "invalid_request"}])
    await _run(write_job, server, captured)
    (request,) = _by_name(captured.finished())["chat claude-sonnet-5-5"]
    assert dict(request.attributes or {})["error.type"] == "invalid_request_error"
    assert request.status.status_code == StatusCode.ERROR
    errors = captured.metric_names()["batchrun.client.errors"].data.data_points
    assert [p.value for p in errors] == [1]


async def test_metrics_follow_the_genai_conventions(
    write_job: JobWriter, sim_server: StartSim, captured: Captured
) -> None:
    """Duration, token usage by type, time to first chunk and per chunk are recorded."""
    # Tokens 5 ms apart arrive in reads of their own: a chunk is what one read brought.
    server = sim_server(token_interval_s=0.005)
    results = await _run(write_job, server, captured, rows=3)
    metrics = captured.metric_names()
    for name in (
        "gen_ai.client.operation.duration",
        "gen_ai.client.token.usage",
        "gen_ai.client.operation.time_to_first_chunk",
        "gen_ai.client.operation.time_per_output_chunk",
    ):
        assert name in metrics
    usage = {
        dict(p.attributes)["gen_ai.token.type"]: p.sum
        for p in metrics["gen_ai.client.token.usage"].data.data_points
    }
    assert usage == {
        "input": results["input_tokens"].sum(),
        "output": results["output_tokens"].sum(),
    }
    (ttft,) = metrics["gen_ai.client.operation.time_to_first_chunk"].data.data_points
    assert ttft.count == 3
    # One gap per read after the first that brought content, recorded as it arrived. A
    # simulator held up by a loaded host sends what is due in one write, so that a short
    # reply can come in one read: only some reply must have come in several.
    reads = [len(set(offsets)) for offsets in results["chunk_offsets_s"].to_list()]
    assert max(reads) > 1
    (gaps,) = metrics["gen_ai.client.operation.time_per_output_chunk"].data.data_points
    assert gaps.count == sum(n - 1 for n in reads)
    assert gaps.min > 0


async def test_content_is_captured_only_when_asked(
    write_job: JobWriter, sim_server: StartSim, captured: Captured
) -> None:
    """capture_content: true puts the prompt and the completion on the request span."""
    server = sim_server()
    results = await _run(write_job, server, captured, telemetry={"capture_content": True})
    (request,) = _by_name(captured.finished())["chat claude-sonnet-5-5"]
    attrs = dict(request.attributes or {})
    assert json.loads(str(attrs["gen_ai.input.messages"]))[0]["role"] == "user"
    output = json.loads(str(attrs["gen_ai.output.messages"]))
    assert output == [{"role": "assistant", "content": results["completion"][0]}]


async def test_the_file_exporter_writes_otlp_json_lines(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """traces: file writes traces.jsonl of OTLP export requests with hex ids matching the rows."""
    server = sim_server()
    job = load_job(
        write_job(
            rows=3,
            extra={"endpoint": {"base_url": server.base_url}, "telemetry": {"traces": "file"}},
        )
    )
    outcome = await run_job(job, sleep=no_sleep)
    lines = (outcome.run_dir / "traces.jsonl").read_text().splitlines()
    spans = [
        span
        for line in lines
        for rs in json.loads(line)["resourceSpans"]
        for ss in rs["scopeSpans"]
        for span in ss["spans"]
    ]
    trace_ids = {s["traceId"] for s in spans if s["name"].startswith("chat ")}
    results = pl.read_parquet(outcome.run_dir / "results.parquet")
    assert trace_ids == set(results["trace_id"].to_list())
    assert all(len(s["spanId"]) == 16 for s in spans)
    resource = json.loads(lines[0])["resourceSpans"][0]["resource"]["attributes"]
    assert {"key": "service.name", "value": {"stringValue": "batchrun"}} in resource
    assert (outcome.run_dir / "metrics.jsonl").exists()


async def test_spans_reach_an_otlp_http_receiver(
    write_job: JobWriter, sim_server: StartSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """traces: otlp sends protobuf spans to OTEL_EXPORTER_OTLP_ENDPOINT, flushed at the end."""
    received: list[ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        return web.Response(status=200)

    async def accept(request: web.Request) -> web.Response:
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    app.router.add_post("/v1/metrics", accept)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "nightly-eval")
    try:
        server = sim_server()
        job = load_job(
            write_job(
                rows=2,
                extra={"endpoint": {"base_url": server.base_url}, "telemetry": {"traces": "otlp"}},
            )
        )
        # The exporter posts from its own thread; run the job off this loop so the receiver
        # (on this loop) can answer.
        await asyncio.to_thread(asyncio.run, run_job(job, sleep=no_sleep))
    finally:
        await runner.cleanup()
    names = [
        span.name
        for message in received
        for rs in message.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]
    assert names.count("chat claude-sonnet-5-5") == 2
    assert "batchrun.run" in names
    service = {
        a.key: a.value.string_value for a in received[0].resource_spans[0].resource.attributes
    }
    assert service["service.name"] == "nightly-eval"


def test_the_key_appears_nowhere(
    write_job: JobWriter, sim_server: StartSim, tmp_path: Path
) -> None:
    """With failures of every kind and a recognisable key, no file of the run folder and no
    line of stderr holds the key."""
    server = sim_server(
        faults=[
            {"kind": "overloaded_midstream", "attempts": [1]},
            {"kind": "rate_limited", "attempts": [2], "retry_after_s": 0},
            {"kind": "invalid_request", "match": "sky"},
        ]
    )
    job = write_job(
        rows=6,
        extra={
            "endpoint": {"base_url": server.base_url},
            "telemetry": {"traces": "file", "capture_content": True},
        },
    )
    env = {**os.environ, "ANTHROPIC_API_KEY": SECRET}
    done = subprocess.run(
        [sys.executable, "-m", "batchrun.cli", str(job), "--debug"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {
        "results.parquet",
        "attempts.parquet",
        "run.json",
        "traces.jsonl",
    }
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
        assert b"RECOGNISABLE" not in path.read_bytes(), path
    assert "RECOGNISABLE" not in done.stderr + done.stdout


def test_log_lines_inside_a_request_carry_its_context(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """A retry log line names trace_id, span_id, id and attempt."""
    server = sim_server(faults=[{"kind": "overloaded", "attempts": [1]}])
    job = write_job(rows=1, extra={"endpoint": {"base_url": server.base_url}})
    done = subprocess.run(
        [sys.executable, "-m", "batchrun.cli", str(job)],
        env={**os.environ, "ANTHROPIC_API_KEY": "k"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    (retry,) = [e for e in events if e["event"] == "batchrun.request.retry_scheduled"]
    assert retry["id"] == "r0"
    assert retry["attempt"] == 1
    assert len(retry["trace_id"]) == 32
    assert len(retry["span_id"]) == 16
