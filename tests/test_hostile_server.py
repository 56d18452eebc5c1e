"""Hostile servers on loopback: a server that echoes the key everywhere, and oversized streams."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
import structlog
import yaml

from batchrun.apis import APIS
from batchrun.apis.sse import MAX_SIZE
from batchrun.batch.api import BatchesAPI
from batchrun.call.attempt import stream_attempt
from batchrun.call.endpoint import ApiClient
from batchrun.call.secrets import MAX_TEXT, Scrubber
from batchrun.call.transport import AiohttpTransport
from batchrun.clock import Clock
from batchrun.errors import RetryableError
from batchrun.models import Attempt
from batchrun.telemetry.setup import configure_logging, scrubbed_logs

KEY = "sk-ant-api03-HOSTILE-echo-0123456789abcdefghijklmnop"
REDIS_PASSWORD = "redis-pw-hostile-31337"
BODY = {
    "model": "m",
    "max_tokens": 8,
    "stream": True,
    "messages": [{"role": "user", "content": "x"}],
}

Handler = Callable[[dict[str, str], dict[str, Any], asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> tuple[asyncio.Server, str]:
    """A bare HTTP/1.1 server on 127.0.0.1: reads one request per connection and lets
    ``handler`` write whatever bytes it likes back (headers lower-cased, body as JSON)."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")[1:]
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines if line)
            }
            body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))))
            await handler(headers, body, writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up, as it should on an oversized stream
        finally:
            writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def _response(status: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items())]
    lines += [f"content-length: {len(body)}", "connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(f"event: {n}\ndata: {json.dumps(d)}\n\n".encode() for n, d in events)


async def _echo(
    headers: dict[str, str], body: dict[str, Any], writer: asyncio.StreamWriter
) -> None:
    """Echoes the key it was sent (and a Redis password it somehow knows) wherever it can,
    chosen by the prompt."""
    key = headers["x-api-key"]
    secret = f"{key} {REDIS_PASSWORD}"
    prompt = body["messages"][0]["content"]
    sse = {"content-type": "text/event-stream", "request-id": f"req_{key}"}
    if prompt == "ok":
        text = {"type": "text_delta", "text": f"you sent {secret}"}
        data = _sse(
            ("message_start", {"message": {"id": key, "model": key, "usage": {}}}),
            ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"index": 0, "delta": text}),
            ("content_block_stop", {"index": 0}),
            ("message_delta", {"delta": {"stop_reason": key, "stop_sequence": key}}),
            ("message_stop", {}),
        )
        limit = {"anthropic-ratelimit-requests-limit": key}
        writer.write(_response("200 OK", {**sse, **limit}, data))
    elif prompt == "json":
        error = {"type": "error", "error": {"type": "invalid_request_error", "message": secret}}
        writer.write(_response("400 Bad Request", {}, json.dumps(error).encode()))
    elif prompt == "html":
        page = f"<html><body><h1>502</h1><pre>x-api-key: {secret}</pre>{'.' * 20000}</body></html>"
        writer.write(_response("502 Bad Gateway", {"content-type": "text/html"}, page.encode()))
    elif prompt == "event":
        error = {"type": "error", "error": {"type": "overloaded_error", "message": secret}}
        writer.write(_response("200 OK", sse, _sse(("error", error))))
    elif prompt == "status":
        writer.write(f"HTTP/1.1 200 {secret}{'x' * 15000}\r\n\r\n".encode())
    else:  # "fatal", last: the run aborts with this message in run.json and on stderr
        error = {"type": "error", "error": {"type": "authentication_error", "message": secret}}
        writer.write(_response("401 Unauthorized", {"request-id": key}, json.dumps(error).encode()))


async def _cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchrun.cli", *args, env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, stderr.decode()


async def test_a_server_that_echoes_the_key_gets_it_written_nowhere(tmp_path: Path) -> None:
    """Key and Redis password, echoed in bodies, HTML, error events, headers, a status line
    and a completion, appear in no file of the run folder, no Parquet value and no stderr."""
    server, url = await _serve(_echo)
    prompts = ["ok", "json", "html", "event", "status", "fatal"]
    (tmp_path / "data.csv").write_text("id,q\n" + "".join(f"{p},{p}\n" for p in prompts))
    job = {
        "name": "hostile",
        "input": {"path": "data.csv", "id_column": "id", "prompt": "{q}"},
        "request": {"model": "claude-sonnet-5-5", "max_tokens": 8},
        "endpoint": {"base_url": url},
        # One at a time, in input order: the fatal row comes last.
        "limits": {"concurrency": 1, "redis_url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0"},
        "retry": {"max_attempts": 2, "initial_backoff_s": 0.001, "max_backoff_s": 0.01},
        "timeouts": {"connect_s": 5, "idle_s": 5, "total_s": 20},
        "output": {"dir": "out"},
        "telemetry": {"traces": "file", "capture_content": True},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    env = {**os.environ, "ANTHROPIC_API_KEY": KEY}
    async with server:
        code, run_log = await _cli(str(tmp_path / "job.yaml"), env=env)
        report_code, report_log = await _cli("report", str(tmp_path / "out"), env=env)
    assert code == 3, run_log
    assert report_code in (0, 1), report_log
    run_dir = tmp_path / "out"
    results = pl.read_parquet(run_dir / "results.parquet")
    assert results.sort("id").select("id", "status").rows() == [
        ("event", "error"),
        ("html", "error"),
        ("json", "error"),
        ("ok", "ok"),
        ("status", "error"),
    ]
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert {"run.json", "traces.jsonl", "report.html", "attempts.parquet"} <= {
        p.name for p in files
    }
    texts = {"stderr of the run": run_log, "stderr of the report": report_log}
    texts |= {str(p): p.read_bytes().decode("latin-1") for p in files}
    for name in ("results.parquet", "attempts.parquet"):
        frame = pl.read_parquet(run_dir / name)
        for column in frame.columns:
            texts[f"{name}:{column}"] = "\n".join(map(str, frame[column].to_list()))
    for secret in (KEY, REDIS_PASSWORD):
        leaks = [name for name, text in texts.items() if secret in text]
        assert leaks == [], f"{secret} leaked into {leaks}"
    assert "[redacted]" in results.filter(pl.col("id") == "ok")["completion"][0]
    messages = results["error_message"].drop_nulls().to_list()
    assert all(len(m) <= MAX_TEXT for m in messages)
    assert any("[redacted]" in m for m in messages)
    assert "[redacted]" in json.loads((run_dir / "run.json").read_text())["message"]


async def _attempt(url: str) -> Attempt:
    async with ApiClient(transport=AiohttpTransport(), base_url=url) as client:
        return await stream_attempt(client, APIS["messages"], BODY, total_s=60, clock=Clock())


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(b"x" * 65536, id="one line without a newline"),
        pytest.param(b"data: " + b"y" * 65530 + b"\n", id="one event of many data lines"),
    ],
)
async def test_an_endless_line_or_event_ends_the_attempt_as_a_stream_error(shape: bytes) -> None:
    """A 300 MB line or event ends the attempt as a retryable stream_error after the bound,
    the client hanging up long before the server is done."""
    total = 300 * 1024 * 1024
    written = [0]

    async def handler(_: dict[str, str], __: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: Text/Event-Stream\r\n\r\n")
        writer.write(b"event: message_start\n")
        while written[0] < total:  # until the client hangs up (drain raises)
            writer.write(shape)
            written[0] += len(shape)
            await writer.drain()

    server, url = await _serve(handler)
    async with server:
        attempt = await _attempt(url)
        at_end = written[0]
    assert isinstance(attempt.error, RetryableError)
    assert attempt.error.error_type == "stream_error"
    assert f"{MAX_SIZE:,} characters" in attempt.error.message
    assert MAX_SIZE < at_end < total // 10


async def test_batch_answers_are_scrubbed_where_they_enter() -> None:
    """Batch objects, their request-id, result lines and error bodies lose the key."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/results"):
            error = {"type": "error", "error": {"type": "api_error", "message": KEY}}
            line = {"custom_id": "c1", "result": {"type": "errored", "error": error}, KEY: [KEY]}
            return httpx.Response(200, content=json.dumps(line).encode() + b"\n")
        if request.method == "POST":
            return httpx.Response(200, json={"id": "b1", "note": KEY}, headers={"request-id": KEY})
        return httpx.Response(502, text=f"<html><pre>{KEY}</pre></html>")

    transport = httpx.MockTransport(handler)
    async with ApiClient(
        transport=transport, base_url="http://api.test", scrubber=Scrubber([KEY])
    ) as client:
        batches = BatchesAPI(client, APIS["messages"])
        created = await batches.create(b"{}")
        lines = [line async for line in batches.results({"id": "b1"})]
        with pytest.raises(RetryableError) as raised:
            await batches.retrieve("b1")
    seen = json.dumps([created, lines, raised.value.message])
    assert KEY not in seen
    assert seen.count("[redacted]") == 6
    assert created[0]["id"] == "b1"
    assert raised.value.http_status == 502


def test_log_lines_are_scrubbed_while_a_client_is_open() -> None:
    """Every string of a log line is scrubbed while a run's client is open, and only then."""
    stream = io.StringIO()
    configure_logging(stream=stream, json_lines=True)
    log = structlog.get_logger()
    try:
        with scrubbed_logs(Scrubber([KEY]).text):
            log.warning("batchrun.test.echo", error=f"echo {KEY}")
        log.warning("batchrun.test.echo", error=f"echo {KEY}")
    finally:
        structlog.reset_defaults()
    inside, outside = map(json.loads, stream.getvalue().splitlines())
    assert inside["error"] == "echo [redacted]"
    assert outside["error"] == f"echo {KEY}"
