"""Issue 16, point 8: a Messages job in the real API's shape, end to end against the simulator.

Adaptive thinking, effort, automatic prompt caching over a shared long system prompt and a JSON
schema output; the rows read back from results.parquet and priced by hand from the catalogue's
data file (never through batchrun's own price functions). Then the same job in batch mode, and a
job that forces a tool call.
"""

from __future__ import annotations

import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.job.schema import load_job
from batchrun.run import run_job
from tests.conftest import JobWriter, no_sleep

MODEL = "claude-sonnet-5-5"
SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string"},
        "confidence": {"type": "number"},
        "sources": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["answer", "confidence", "sources"],
    "additionalProperties": False,
}
# Long enough to be worth caching, the same for every row: the prompts share it as their prefix.
SYSTEM = "You are a careful assistant. Answer in the JSON the schema asks for. " * 60
TOOL = {
    "name": "lookup",
    "description": "Look a fact up.",
    "input_schema": {
        "type": "object",
        "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
        "required": ["query", "limit"],
    },
}
ROWS = 4


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


def _catalogue_price(model: str) -> dict[str, float]:
    """The model's prices per million tokens, read straight from the catalogue's data file;
    cache prices missing there follow the API's multipliers of the input price."""
    data = tomllib.loads(resources.files("batchrun.job").joinpath("models.toml").read_text())
    (entry,) = [m for m in data["model"] if m["id"] == model]
    price = dict(entry["price"])
    price.setdefault("cache_write_5m", 1.25 * price["input"])
    price.setdefault("cache_write_1h", 2.0 * price["input"])
    price.setdefault("cache_read", 0.1 * price["input"])
    return price


def _by_hand(row: dict[str, Any], *, batch: bool = False) -> float:
    """A row's cost from its token columns and the catalogue's prices: 5-minute writes only."""
    price = _catalogue_price(MODEL)
    assert row["cache_creation_1h_input_tokens"] in (0, None)
    usd = (
        row["input_tokens"] * price["input"]
        + row["cache_creation_input_tokens"] * price["cache_write_5m"]
        + row["cache_read_input_tokens"] * price["cache_read"]
        + row["output_tokens"] * price["output"]
    ) / 1e6
    return usd / 2 if batch else usd


def _today_job(
    write_job: JobWriter, *, output_format: Any = None, mode: str = "stream", name: str = "job"
) -> dict[str, Any]:
    return {
        "input": {"system": SYSTEM},
        "request": {
            "model": MODEL,
            "max_tokens": 4096,
            "mode": mode,
            "thinking": {"type": "adaptive"},
            "effort": "high",
            "prompt_cache": "5m",
            "output_format": SCHEMA if output_format is None else output_format,
        },
        "limits": {"concurrency": 1},
        # Deltas apart in time, as the API sends them: the thinking arrives before the text.
        "sim": {"token_interval_s": 0.001},
    }


async def _run(write_job: JobWriter, extra: dict[str, Any], name: str = "job") -> Any:
    job = load_job(write_job(rows=ROWS, extra=extra, name=name))
    outcome = await run_job(job, sleep=no_sleep)
    assert outcome.exit_code == 0
    return outcome


def _check_json_rows(results: pl.DataFrame) -> None:
    """Every row ok; the completion is the JSON text of the schema's shape; content_json holds
    a signed thinking block before the text block."""
    assert results["status"].to_list() == ["ok"] * ROWS
    for row in results.iter_rows(named=True):
        answer = json.loads(row["completion"])
        assert set(answer) == {"answer", "confidence", "sources"}
        assert isinstance(answer["answer"], str)
        assert isinstance(answer["confidence"], int | float)
        assert all(isinstance(s, str) for s in answer["sources"])
        blocks = json.loads(row["content_json"])
        assert [b["type"] for b in blocks] == ["thinking", "text"]
        assert blocks[0]["thinking"]
        assert blocks[0]["signature"]
        assert blocks[1]["text"] == row["completion"]
        assert row["stop_reason"] == "end_turn"
        usage = json.loads(row["usage_json"])
        for key in ("cache_read_input_tokens", "cache_creation_input_tokens", "cache_creation"):
            assert key in usage
        assert usage["input_tokens"] == row["input_tokens"]
        assert usage["cache_read_input_tokens"] == row["cache_read_input_tokens"]
        assert row["service_tier"]


async def test_thinking_effort_caching_and_json_output_end_to_end(
    write_job: JobWriter, tmp_path: Path
) -> None:
    # The first text delta comes ten or more thinking deltas after the first content. At 1 ms
    # a delta, a simulator held up that long by a loaded host writes both at once (it sends
    # what is due together) and ttft_text_s equals ttft_s; at 10 ms it takes a 0.1 s stall.
    extra = _today_job(write_job)
    extra["sim"] = {"token_interval_s": 0.01}
    outcome = await _run(write_job, extra)
    results = pl.read_parquet(outcome.run_dir / "results.parquet").sort("input_row")
    _check_json_rows(results)
    rows = list(results.iter_rows(named=True))
    for row in rows:
        assert row["ttft_s"] < row["ttft_text_s"]

    # The first request writes the shared prefix; every later one reads it.
    first, *later = rows
    assert first["cache_creation_input_tokens"] > 0
    assert first["cache_creation_5m_input_tokens"] == first["cache_creation_input_tokens"]
    assert first["cache_read_input_tokens"] == 0
    for row in later:
        assert row["cache_read_input_tokens"] > 0
        assert row["cache_read_input_tokens"] <= first["cache_creation_input_tokens"]
    # input_tokens counts only the uncached part: far less than the system prompt alone.
    system_tokens = len(SYSTEM) // 4
    for row in later:
        assert row["input_tokens"] < system_tokens // 4
        assert row["cache_read_input_tokens"] >= system_tokens * 9 // 10
    # Uncached + read + written is the whole prompt, about the same for every row (the
    # questions differ by a few tokens): no part is counted twice.
    totals = [
        r["input_tokens"] + r["cache_read_input_tokens"] + r["cache_creation_input_tokens"]
        for r in rows
    ]
    assert max(totals) - min(totals) < 20
    assert min(totals) >= system_tokens

    # cost_usd is the catalogue's list price, computed by hand.
    for row in rows:
        assert row["cost_usd"] == pytest.approx(_by_hand(row), rel=1e-9)
    cost = json.loads((outcome.run_dir / "run.json").read_text())["cost"]
    assert cost["cost_usd"] == pytest.approx(sum(_by_hand(r) for r in rows), abs=5e-7)
    assert cost["cache_read_input_tokens"] == sum(r["cache_read_input_tokens"] for r in rows)
    assert cost["cache_creation_input_tokens"] == sum(
        r["cache_creation_input_tokens"] for r in rows
    )
    price = _catalogue_price(MODEL)
    reads = cost["cache_read_input_tokens"]
    writes = cost["cache_creation_input_tokens"]
    saved = (reads * (price["input"] - price["cache_read"])) - (
        writes * (price["cache_write_5m"] - price["input"])
    )
    assert cost["cache_saved_usd"] == pytest.approx(saved / 1e6, abs=5e-7)
    assert cost["cache_saved_usd"] > 0
    assert outcome.cost.startswith(f"cost ${cost['cost_usd']:,.6f} (prompt cache saved $")


async def test_the_schema_from_a_json_file(write_job: JobWriter, tmp_path: Path) -> None:
    """output_format names a .json file next to the job: the same rows as the inline schema."""
    (tmp_path / "answer.schema.json").write_text(json.dumps(SCHEMA), encoding="utf-8")
    outcome = await _run(write_job, _today_job(write_job, output_format="answer.schema.json"))
    results = pl.read_parquet(outcome.run_dir / "results.parquet").sort("input_row")
    _check_json_rows(results)


async def test_the_same_job_in_batch_mode_costs_half(write_job: JobWriter) -> None:
    """mode: batch: the same content shapes; cost_usd is half the list price of each row."""
    outcome = await _run(write_job, _today_job(write_job, mode="batch"), name="batched")
    results = pl.read_parquet(outcome.run_dir / "results.parquet").sort("input_row")
    _check_json_rows(results)
    for row in results.iter_rows(named=True):
        assert row["cost_usd"] == pytest.approx(_by_hand(row, batch=True), rel=1e-9)
        assert row["service_tier"] == "batch"
        assert row["ttft_s"] is None
        assert row["ttft_text_s"] is None
    cost = json.loads((outcome.run_dir / "run.json").read_text())["cost"]
    assert cost["mode"] == "batch"
    assert cost["batch_usd"] == cost["cost_usd"]
    assert cost["cost_usd"] == pytest.approx(
        sum(_by_hand(r, batch=True) for r in results.iter_rows(named=True)), abs=5e-7
    )


async def test_a_forced_tool_call_is_recorded_as_its_tool_use_block(write_job: JobWriter) -> None:
    """tool_choice any: stop_reason tool_use; content_json holds the tool_use block with its
    input assembled into an object; completion is the text blocks only (none here)."""
    extra = {
        "request": {"model": MODEL, "tools": [TOOL], "tool_choice": {"type": "any"}},
        "limits": {"concurrency": 1},
    }
    outcome = await _run(write_job, extra)
    results = pl.read_parquet(outcome.run_dir / "results.parquet").sort("input_row")
    assert results["status"].to_list() == ["ok"] * ROWS
    for row in results.iter_rows(named=True):
        assert row["stop_reason"] == "tool_use"
        blocks = json.loads(row["content_json"])
        (use,) = [b for b in blocks if b["type"] == "tool_use"]
        assert use["name"] == "lookup"
        assert use["id"].startswith("toolu_")
        assert isinstance(use["input"], dict)
        assert isinstance(use["input"]["query"], str)
        assert isinstance(use["input"]["limit"], int)
        text = "".join(b["text"] for b in blocks if b["type"] == "text")
        assert (row["completion"] or "") == text
        # ttft_text_s is when the answer's text started: a reply of a tool call alone has none.
        if text:
            assert row["ttft_s"] <= row["ttft_text_s"]
        else:
            assert row["ttft_text_s"] is None
        assert row["cost_usd"] == pytest.approx(
            (
                row["input_tokens"] * _catalogue_price(MODEL)["input"]
                + row["output_tokens"] * _catalogue_price(MODEL)["output"]
            )
            / 1e6,
            rel=1e-9,
        )
