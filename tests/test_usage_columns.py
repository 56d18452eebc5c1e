"""What the stream says beyond text: thinking, tool and server-tool blocks in content_json, the
cache and tier columns, usage_json, ttft_text_s and cost_usd, from fold to results.parquet."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from batchrun.apis import APIS
from batchrun.apis.sse import SSEDecoder
from batchrun.call.attempt import stream_attempt
from batchrun.call.endpoint import ApiClient
from batchrun.clock import Clock
from batchrun.job.schema import load_job
from batchrun.models import Completion
from batchrun.record.schema import RESULT_SCHEMA
from batchrun.run import run_job
from batchrun.telemetry.semconv import request_attributes
from tests.conftest import JobWriter, fixture_path, no_sleep
from tests.test_telemetry import Captured

STREAMS = fixture_path("streams-2026")
NEW_COLUMNS = [
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens",
    "service_tier",
    "usage_json",
    "ttft_text_s",
    "cost_usd",
]
SIGNATURE = "c3ludGhldGljLXNpZ25hdHVyZS1mb3ItYS10ZXN0LWZpeHR1cmU="
# Sonnet 5.5's list prices per million tokens (PROTOCOL.md): the cache prices follow the API's
# multipliers of the input price (5m write 2.50, 1h write 4, read 0.20).
PRICES = {"claude-sonnet-5-5": {"input": 2.0, "output": 10.0}}


def _stream(name: str) -> bytes:
    return (STREAMS / f"{name}.sse").read_bytes()


def _fold(data: bytes, chunk: int | None = None) -> Completion:
    decoder, fold = SSEDecoder(), APIS["messages"].new_fold()
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    for piece in [*pieces, b"\n\n"]:
        fold.feed_all(decoder.feed(piece))
    return fold.result()


# --- the fold -----------------------------------------------------------------------------------


def test_thinking_then_text_keeps_the_thinking_block_and_its_signature() -> None:
    """A thinking block (deltas joined, signature kept) precedes the text, the completion."""
    done = _fold(_stream("thinking_cache_write"))
    assert done.text == '{"answer": "Paris"}'
    assert json.loads(done.content_json or "") == [
        {
            "type": "thinking",
            "thinking": "The user wants the capital of France as JSON. Paris.",
            "signature": SIGNATURE,
        },
        {"type": "text", "text": '{"answer": "Paris"}'},
    ]
    assert done.stop_reason == "end_turn"


def test_usage_merges_message_start_and_message_delta() -> None:
    """message_delta's counts replace message_start's; what only message_start sent is kept."""
    done = _fold(_stream("thinking_cache_write"))
    assert json.loads(done.usage_json or "") == {
        "input_tokens": 24,
        "cache_creation_input_tokens": 2048,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 2048},
        "output_tokens": 41,  # message_start's 3 was a placeholder
        "service_tier": "standard",
        "inference_geo": "global",
        "output_tokens_details": {"thinking_tokens": 33},
    }
    assert (done.input_tokens, done.output_tokens) == (24, 41)
    assert (done.cache_read_input_tokens, done.cache_creation_input_tokens) == (0, 2048)
    assert (done.cache_creation_5m_input_tokens, done.cache_creation_1h_input_tokens) == (0, 2048)
    assert done.reasoning_output_tokens == 33
    assert done.service_tier == "standard"


def test_tool_use_input_is_assembled_from_its_fragments() -> None:
    """input_json_delta fragments (the first empty) become the tool_use block's input object."""
    done = _fold(_stream("tool_use_cache_read"))
    assert done.text == "Let me look that up."
    assert json.loads(done.content_json or "")[1] == {
        "type": "tool_use",
        "id": "toolu_fixture_01",
        "name": "get_capital",
        "input": {"country": "France"},
    }
    assert done.stop_reason == "tool_use"
    assert (done.input_tokens, done.cache_read_input_tokens, done.output_tokens) == (31, 2048, 52)


def test_redacted_thinking_and_server_tool_blocks_are_kept_as_sent() -> None:
    """redacted_thinking, server_tool_use (input assembled) and its result block stay in
    content_json, in order; the text is only the text block's; usage keeps server_tool_use."""
    done = _fold(_stream("server_tool_redacted"))
    blocks = json.loads(done.content_json or "")
    assert [b["type"] for b in blocks] == [
        "redacted_thinking",
        "server_tool_use",
        "web_search_tool_result",
        "text",
    ]
    assert blocks[0]["data"].startswith("EmwKAhgB")
    assert blocks[1]["input"] == {"query": "capital of France"}
    assert blocks[2]["content"][0]["url"] == "https://en.wikipedia.org/wiki/Paris"
    assert done.text == "Paris is the capital of France."
    usage = json.loads(done.usage_json or "")
    assert usage["server_tool_use"] == {"web_search_requests": 1}
    assert (done.input_tokens, done.output_tokens) == (2630, 95)  # the delta's, not the start's
    assert done.cache_creation_input_tokens == 1000
    assert (done.cache_creation_5m_input_tokens, done.cache_creation_1h_input_tokens) == (
        None,
        None,
    )
    assert done.service_tier == "priority"
    assert done.reasoning_output_tokens is None


@pytest.mark.parametrize("name", ["thinking_cache_write", "server_tool_redacted"])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_the_fold_does_not_depend_on_where_reads_split(name: str, chunk: int) -> None:
    """Fed in pieces of any size, a stream folds to the same Completion as fed whole."""
    assert _fold(_stream(name), chunk) == _fold(_stream(name))


def test_a_message_read_whole_folds_like_its_stream() -> None:
    """Batch mode: the message the stream describes, with its usage, gives the same fields."""
    streamed = _fold(_stream("server_tool_redacted"))
    message = {
        "id": streamed.response_id,
        "model": streamed.response_model,
        "content": json.loads(streamed.content_json or ""),
        "stop_reason": streamed.stop_reason,
        "stop_sequence": None,
        "usage": json.loads(streamed.usage_json or ""),
    }
    assert APIS["messages"].batch_completion(message) == streamed


# --- one attempt: when the text began ----------------------------------------------------------


async def _pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
        await asyncio.sleep(0)


async def test_ttft_text_s_is_when_the_first_text_delta_arrived() -> None:
    """Thinking arrives in the first read, text in the third: ttft_s is the first read's
    offset, ttft_text_s the third's (a clock that ticks once per reading)."""
    data = _stream("thinking_cache_write")
    cut_thinking = data.index(b"event: content_block_stop")  # after the signature
    cut_text = data.index(b'"type":"text_delta"')
    cut_text = data.rindex(b"event:", 0, cut_text)
    ticks: Iterator[float] = itertools.count(0.0, 1.0)
    headers = {"content-type": "text/event-stream", "request-id": "req_1"}
    parts = (data[:cut_thinking], data[cut_thinking:cut_text], data[cut_text:] + b"\n\n")
    async with ApiClient(
        transport=httpx.MockTransport(
            lambda request: httpx.Response(200, headers=headers, content=_pieces(*parts))
        ),
        base_url="http://api.test",
    ) as client:
        attempt = await stream_attempt(
            client,
            APIS["messages"],
            {"model": "m", "max_tokens": 64, "stream": True, "messages": []},
            total_s=5,
            clock=Clock(monotonic=lambda: next(ticks)),
        )
    assert attempt.error is None
    # Readings: the Clock's origin (0), sent_at (1), then one per read: 2, 3, 4.
    assert attempt.ttft_s == 1.0  # the thinking deltas, read at 2
    assert attempt.ttft_text_s == 3.0  # the first text delta, read at 4
    assert attempt.chunk_offsets == [1.0, 1.0, 1.0, 3.0, 3.0]


# --- a run on loopback: the columns in results.parquet ---------------------------------------


async def _replay_server() -> tuple[asyncio.Server, str]:
    """Answers each request with the fixture stream its prompt names, in two writes (what
    comes before the first text delta, then the rest)."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            body = json.loads(await reader.readexactly(length))
            data = _stream(body["messages"][0]["content"]) + b"\n\n"
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nrequest-id: req_replay\r\n"
                + f"content-length: {len(data)}\r\nconnection: close\r\n\r\n".encode()
            )
            cut = data.index(b'"type":"text_delta"')
            cut = data.rindex(b"event:", 0, cut)
            writer.write(data[:cut])
            await writer.drain()
            writer.write(data[cut:])
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def _replay_job(write_job: JobWriter, url: str, tmp_path: Path, **extra: Any) -> Path:
    path = write_job(
        rows=3,
        extra={
            "endpoint": {"base_url": url},
            "request": {"model": "claude-sonnet-5-5"},
            "prices": PRICES,
            **extra,
        },
    )
    names = ["thinking_cache_write", "tool_use_cache_read", "server_tool_redacted"]
    lines = ["id,question", *(f"r{i},{name}" for i, name in enumerate(names))]
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# By hand, at 2 (input), 2.50 (5m write), 4 (1h write), 0.20 (read), 10 (output) per million:
COST_R0 = (24 * 2 + 2048 * 4 + 41 * 10) / 1e6  # 1h writes
COST_R1 = (31 * 2 + 2048 * 0.2 + 52 * 10) / 1e6  # cache reads
COST_R2 = (2630 * 2 + 1000 * 2.5 + 95 * 10) / 1e6  # no TTL split: all at the 5m rate


async def test_a_run_records_every_new_column(
    write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three replayed streams become rows whose new columns hold what the streams said, and
    whose cost_usd is the hand-computed list price; run.json sums them with the cache split."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    server, url = await _replay_server()
    async with server:
        job = load_job(_replay_job(write_job, url, tmp_path))
        outcome = await run_job(job, sleep=no_sleep)
    assert outcome.exit_code == 0
    results = pl.read_parquet(outcome.run_dir / "results.parquet").sort("id")
    assert set(NEW_COLUMNS) <= set(results.columns)
    rows = results.select(
        "id",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "cache_creation_5m_input_tokens",
        "cache_creation_1h_input_tokens",
        "service_tier",
    ).rows()
    assert rows == [
        ("r0", 0, 2048, 0, 2048, "standard"),
        ("r1", 2048, 0, 0, 0, "standard"),
        ("r2", 0, 1000, None, None, "priority"),
    ]
    assert results["cost_usd"].to_list() == pytest.approx([COST_R0, COST_R1, COST_R2])
    usage = [json.loads(u) for u in results["usage_json"]]
    assert usage[0]["output_tokens_details"] == {"thinking_tokens": 33}
    assert usage[2]["server_tool_use"] == {"web_search_requests": 1}
    assert [u["output_tokens"] for u in usage] == results["output_tokens"].to_list()
    thinking = results.row(0, named=True)
    assert json.loads(thinking["content_json"])[0]["signature"] == SIGNATURE
    assert thinking["completion"] == '{"answer": "Paris"}'
    for row, before_text in zip(results.iter_rows(named=True), (3, 0, 2), strict=True):
        # Every content delta before the first text delta (thinking, tool input) has an offset
        # ahead of it: ttft_text_s is the offset of the first text delta itself.
        assert row["ttft_text_s"] == row["chunk_offsets_s"][before_text]
        assert row["ttft_s"] == row["chunk_offsets_s"][0] <= row["ttft_text_s"]

    cost = json.loads((outcome.run_dir / "run.json").read_text())["cost"]
    # run.json rounds dollars to 6 decimals.
    assert cost["cost_usd"] == pytest.approx(COST_R0 + COST_R1 + COST_R2, abs=5e-7)
    assert cost["stream_usd"] == cost["cost_usd"]
    assert cost["batch_usd"] == pytest.approx(cost["cost_usd"] / 2, abs=5e-7)
    assert cost["cache_read_input_tokens"] == 2048
    assert cost["cache_creation_input_tokens"] == 2048 + 1000
    # Reads save 2 - 0.20 a token; 5m writes cost 0.50 more, 1h writes 2 more.
    assert cost["cache_saved_usd"] == pytest.approx(
        (2048 * 1.8 - 1000 * 0.5 - 2048 * 2) / 1e6, abs=5e-7
    )
    assert cost["cache_hit_rate"] == pytest.approx(
        2048 / ((24 + 31 + 2630) + (2048 + 1000) + 2048), abs=1e-6
    )
    assert cost["unpriced_models"] == []
    assert outcome.cost is not None
    assert outcome.cost.startswith(f"cost ${COST_R0 + COST_R1 + COST_R2:,.6f}")
    assert "prompt cache cost $0.000910 more" in outcome.cost


async def test_a_model_without_a_price_has_null_cost(
    write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No price in the job's table for the model: cost_usd is null, run.json names the model."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    server, url = await _replay_server()
    async with server:
        path = _replay_job(write_job, url, tmp_path, request={"model": "claude-unpriced-9"})
        outcome = await run_job(load_job(path), sleep=no_sleep)
    results = pl.read_parquet(outcome.run_dir / "results.parquet")
    assert results["status"].to_list() == ["ok"] * 3
    assert results["cost_usd"].to_list() == [None] * 3
    cost = json.loads((outcome.run_dir / "run.json").read_text())["cost"]
    assert cost["unpriced_models"] == ["claude-unpriced-9"]
    assert cost["cost_usd"] == 0.0
    assert cost["cache_read_input_tokens"] == 2048


async def test_an_older_folder_without_the_columns_resumes_and_compacts(
    write_job: JobWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part written before the new columns existed: the run resumes past its row, compacts
    it in with nulls, and run.json prices it from its tokens."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    server, url = await _replay_server()
    async with server:
        job = load_job(_replay_job(write_job, url, tmp_path))
        first = await run_job(job, sleep=no_sleep, limit=1)
        run_dir = first.run_dir
        old = pl.read_parquet(run_dir / "results.parquet")
        hash_r0 = old["request_hash"][0]
        # Rewrite the folder as the first release left it: no new columns, no run.json.
        for name in ("results.parquet", "run.json"):
            (run_dir / name).unlink()
        kept = [c for c in RESULT_SCHEMA if c not in NEW_COLUMNS]
        old.select(kept).write_parquet(run_dir / "results.parquet")
        assert "cost_usd" not in pl.read_parquet_schema(run_dir / "results.parquet")
        second = await run_job(job, sleep=no_sleep)
    assert second.exit_code == 0
    assert second.sent == 2  # r0 was done
    results = pl.read_parquet(run_dir / "results.parquet").sort("id")
    assert results["id"].to_list() == ["r0", "r1", "r2"]
    assert results["request_hash"][0] == hash_r0
    assert results["cost_usd"].to_list() == pytest.approx([None, COST_R1, COST_R2])
    assert results["usage_json"][0] is None
    cost = json.loads((run_dir / "run.json").read_text())["cost"]
    # r0 has no cost_usd or cache columns: priced from its input and output tokens alone.
    assert cost["cost_usd"] == pytest.approx((24 * 2 + 41 * 10) / 1e6 + COST_R1 + COST_R2, abs=5e-7)


# --- OpenTelemetry: the usage, the request and the cost on spans and metrics -------------------


@pytest.fixture
def captured(tmp_path: Path) -> Iterator[Captured]:
    c = Captured(tmp_path / "telemetry")
    yield c
    c.telemetry.shutdown()


async def _traced_run(
    write_job: JobWriter, tmp_path: Path, captured: Captured
) -> tuple[pl.DataFrame, dict[str, dict[str, Any]]]:
    server, url = await _replay_server()
    async with server:
        job = load_job(_replay_job(write_job, url, tmp_path))
        outcome = await run_job(job, sleep=no_sleep, telemetry=captured.telemetry)
    results = pl.read_parquet(outcome.run_dir / "results.parquet").sort("id")
    spans = {
        str(dict(s.attributes or {})["batchrun.id"]): dict(s.attributes or {})
        for s in captured.finished()
        if s.name == "chat claude-sonnet-5-5"
    }
    return results, spans


def _sums(metric: Any, key: str) -> dict[Any, Any]:
    """A metric's points summed by one attribute (the others, such as the response model,
    split the points further)."""
    sums: dict[Any, Any] = {}
    for point in metric.data.data_points:
        value = point.sum if hasattr(point, "sum") else point.value
        group = dict(point.attributes)[key]
        sums[group] = sums.get(group, 0) + value
    return sums


async def test_spans_carry_cache_reasoning_tier_and_cost(
    write_job: JobWriter,
    tmp_path: Path,
    captured: Captured,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gen_ai.usage.input_tokens counts cache reads and writes (the Anthropic convention), the
    cache and reasoning counts and the tier are beside it, and the row's cost is on the span."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.delenv("OTEL_SEMCONV_STABILITY_OPT_IN", raising=False)
    results, spans = await _traced_run(write_job, tmp_path, captured)
    assert {k: spans["r0"][k] for k in spans["r0"] if k.startswith("gen_ai.usage.")} == {
        "gen_ai.usage.input_tokens": 24 + 2048,
        "gen_ai.usage.output_tokens": 41,
        "gen_ai.usage.cache_read.input_tokens": 0,
        "gen_ai.usage.cache_creation.input_tokens": 2048,
        "gen_ai.usage.reasoning.output_tokens": 33,
    }
    assert spans["r1"]["gen_ai.usage.input_tokens"] == 31 + 2048
    assert spans["r1"]["gen_ai.usage.cache_read.input_tokens"] == 2048
    assert "gen_ai.usage.reasoning.output_tokens" not in spans["r1"]
    assert spans["r2"]["gen_ai.usage.input_tokens"] == 2630 + 1000
    assert spans["r2"]["anthropic.response.service_tier"] == "priority"
    for row in results.iter_rows(named=True):
        assert spans[row["id"]]["batchrun.cost_usd"] == row["cost_usd"]
        assert "gen_ai.request.stream" not in spans[row["id"]]  # the newest names: opt-in only
    metrics = captured.metric_names()
    assert _sums(metrics["gen_ai.client.token.usage"], "gen_ai.token.type") == {
        "input": (24 + 2048) + (31 + 2048) + (2630 + 1000),
        "output": 41 + 52 + 95,
    }
    assert not [name for name in metrics if name.startswith("gen_ai.client.inference.")]


async def test_the_newest_names_come_with_the_opt_in(
    write_job: JobWriter,
    tmp_path: Path,
    captured: Captured,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental adds the inference usage
    counters and per-operation histograms and the newest span attributes; today's stay."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http, gen_ai_latest_experimental")
    results, spans = await _traced_run(write_job, tmp_path, captured)
    metrics = captured.metric_names()
    assert "gen_ai.client.token.usage" in metrics
    prefix = "gen_ai.client.inference.usage."
    counters = {
        name.removeprefix(prefix): _sums(metric, "gen_ai.token.modality")
        for name, metric in metrics.items()
        if name.startswith(prefix)
    }
    assert counters == {
        "input_tokens": {"unknown": (24 + 2048) + (31 + 2048) + (2630 + 1000)},
        "output_tokens": {"unknown": 41 + 52 + 95},
        "cache_read.input_tokens": {"unknown": 2048},
        "cache_write.input_tokens": {"unknown": 2048 + 1000},
        "reasoning.output_tokens": {"unknown": 33},
    }
    per_input = metrics["gen_ai.client.inference.operation.input_tokens"].data.data_points
    assert sum(p.count for p in per_input) == 3
    assert max(p.max for p in per_input) == 2630 + 1000
    per_output = metrics["gen_ai.client.inference.operation.output_tokens"].data.data_points
    assert (sum(p.count for p in per_output), sum(p.sum for p in per_output)) == (3, 41 + 52 + 95)
    for row in results.iter_rows(named=True):
        assert spans[row["id"]]["gen_ai.request.stream"] is True
        assert spans[row["id"]]["gen_ai.response.time_to_first_chunk"] == row["ttft_s"]


def test_request_attributes_come_from_the_body() -> None:
    """Thinking, effort, structured output, tools, tool choice, tier, automatic caching and stop
    sequences in a body become gen_ai.request.* (and gen_ai.output.type) attributes."""
    body = {
        "model": "claude-sonnet-5-5",
        "max_tokens": 1024,
        "messages": [],
        "stream": True,
        "stop_sequences": ["END"],
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "output_config": {
            "effort": "high",
            "format": {"type": "json_schema", "schema": {"type": "object"}},
        },
        "tools": [{"name": "a", "input_schema": {}}, {"name": "b", "input_schema": {}}],
        "tool_choice": {"type": "any"},
        "service_tier": "auto",
        "cache_control": {"type": "ephemeral", "ttl": "1h"},
    }
    assert request_attributes(body) == {
        "gen_ai.request.stop_sequences": ["END"],
        "gen_ai.request.thinking.type": "enabled",
        "gen_ai.request.thinking.budget_tokens": 2048,
        "gen_ai.request.effort": "high",
        "gen_ai.output.type": "json",
        "gen_ai.request.tools.count": 2,
        "gen_ai.request.tool_choice": "any",
        "gen_ai.request.service_tier": "auto",
        "gen_ai.request.prompt_cache.ttl": "1h",
    }
    adaptive = {"thinking": {"type": "adaptive"}, "cache_control": {"type": "ephemeral"}}
    assert request_attributes(adaptive, latest=True) == {
        "gen_ai.request.thinking.type": "adaptive",
        "gen_ai.request.prompt_cache.ttl": "5m",
        "gen_ai.request.stream": False,
    }
    assert request_attributes({"model": "m", "messages": []}) == {}
