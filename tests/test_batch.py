"""Batch mode on the simulator: stream mode's rows, limits, failures, crashes and cancel."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from structlog.testing import capture_logs

from batchrun.apis import APIS
from batchrun.apis.sse import SSEDecoder
from batchrun.batch import BatchLimits
from batchrun.batch.entries import custom_id
from batchrun.cli import main
from batchrun.errors import JobError
from batchrun.job.schema import Job, load_job
from batchrun.report import load_run, render_summary, summarize
from batchrun.run import RunOutcome, cancel_job, run_job
from batchrun.sim import SimServer
from tests.conftest import STREAM_FILES, JobWriter, await_until, wait_until

StartSim = Callable[..., SimServer]
HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
ENV = {**os.environ, "ANTHROPIC_API_KEY": "test-key"}
POLL_PATH = "/v1/messages/batches/{batch_id}"  # how the simulator counts a retrieve
# What batch mode must fill exactly as stream mode does.
SAME = [
    "id",
    "sample",
    "status",
    "completion",
    "content_json",
    "stop_reason",
    "stop_sequence",
    "input_tokens",
    "output_tokens",
]
TIMING = ["queue_s", "retry_wait_s", "ttft_s", "e2e_s", "tpot_s", "output_tokens_per_s"]


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


def _job_file(
    write_job: JobWriter, server: SimServer, rows: int = 6, name: str = "job", **extra: Any
) -> Path:
    """A batch-mode job on ``server``, one distinct prompt per row."""
    base: dict[str, Any] = {
        "endpoint": {"base_url": server.base_url},
        "input": {"prompt": "{id}: {question}"},
        "request": {"mode": "batch"},
        "output": {"dir": name},
    }
    for key, value in extra.items():
        base[key] = {**base.get(key, {}), **value}
    return write_job(rows=rows, extra=base, name=name)


def _job(write_job: JobWriter, server: SimServer, rows: int = 6, **extra: Any) -> Job:
    return load_job(_job_file(write_job, server, rows, **extra))


def _results(outcome: RunOutcome) -> pl.DataFrame:
    return pl.read_parquet(outcome.run_dir / "results.parquet").sort("id", "sample")


async def _batches(server: SimServer) -> list[dict[str, Any]]:
    """Every batch the simulator has taken, most recent first."""
    async with httpx.AsyncClient(base_url=server.base_url, headers=HEADERS) as client:
        response = await client.get("/v1/messages/batches", params={"limit": 1000})
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def _sizes(batches: list[dict[str, Any]]) -> list[int]:
    return sorted(sum(b["request_counts"].values()) for b in batches)


def _state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "batch" / "state.json"
    return json.loads(path.read_text()) if path.exists() else {"records": []}


class Crash(Exception):
    """The process dies here: nothing after it runs (bar context managers)."""


class LoseAnswer(httpx.AsyncBaseTransport):
    """A real transport that fails one chosen call: ``error`` is raised for the first request
    matching ``method`` and ``path`` (a regex), after it reached the server if ``forward``."""

    def __init__(self, method: str, path: str, error: Exception, *, forward: bool = True) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.method, self.path, self.error, self.forward = method, path, error, forward
        self.fired = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        hit = not self.fired and request.method == self.method
        if hit and re.fullmatch(self.path, request.url.path):
            self.fired = True
            if self.forward:
                response = await self.inner.handle_async_request(request)
                await response.aread()
                await response.aclose()
            raise self.error
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


# --- the same rows as stream mode --------------------------------------------------------


async def test_batch_rows_equal_stream_rows(write_job: JobWriter, sim_server: StartSim) -> None:
    """Per id: stream mode's completions, content, stop reasons and usage; no timing.

    Each mode talks to a fresh simulator of the same seed: the samples of a row differ (the
    simulator's nth reply to a body), so which sample got which reply depends on the order
    they were sent in, and a row's replies are compared as a set."""
    request = {"samples": 2, "max_tokens": 40, "stop_sequences": [" of"]}
    stream_server = sim_server()
    stream_job = _job(
        write_job, stream_server, 8, name="stream", request={**request, "mode": "stream"}
    )
    stream = _results(await run_job(stream_job))
    server = sim_server(batch_processing_s=0.2)
    outcome = await run_job(_job(write_job, server, 8, name="batch", request=request))
    batch = _results(outcome)
    assert outcome.exit_code == 0
    assert outcome.status == "complete"
    assert batch.schema == stream.schema

    def replies(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.select(SAME).drop("sample").sort(pl.all(), nulls_last=True)

    assert replies(batch).rows() == replies(stream).rows()
    assert stream.group_by("id").agg(pl.col("completion").n_unique())["completion"].min() == 2
    assert set(batch["stop_reason"]) >= {"stop_sequence", "max_tokens"}
    assert batch.select(TIMING).null_count().row(0) == (16,) * len(TIMING)
    assert batch["chunk_offsets_s"].null_count() == 16
    assert batch["request_hash"].to_list() == stream["request_hash"].to_list()
    assert (batch["started_at"] <= batch["finished_at"]).all()
    assert batch["attempts"].unique().to_list() == [1]
    (only,) = await _batches(server)
    assert batch["request_id"].unique().to_list() == [
        _state(outcome.run_dir)["records"][0]["request_id"]
    ]
    assert only["request_counts"]["succeeded"] == 16


async def test_a_finished_folder_resumes_across_modes(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """A folder finished in stream mode, run again in batch mode (and again), sends nothing."""
    server = sim_server()
    path = _job_file(write_job, server, request={"mode": "stream"})
    first = await run_job(load_job(path))
    again = await run_job(load_job(path, ["request.mode=batch"]))
    assert (first.exit_code, again.exit_code, again.sent) == (0, 0, 0)
    assert await _batches(server) == []
    assert _results(again).drop("run_id").equals(_results(first).drop("run_id"))


def test_api_complete_has_no_batch_mode(write_job: JobWriter, sim_server: StartSim) -> None:
    """`api: complete` with `mode: batch` is refused when the job is read, saying why."""
    with pytest.raises(JobError, match=r"request: mode: batch needs api: messages"):
        _job(write_job, sim_server(), request={"api": "complete"})


def test_custom_ids_are_safe_unique_and_stable() -> None:
    """custom_id matches the API's pattern for any id, is stable, and differs by sample and salt."""
    ids = ["r1", "a b/c", "é" * 80, "x" * 200, "", "-_-"]
    made = [custom_id("salt", i, s) for i in ids for s in (0, 1, 12345)]
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", c) for c in made)
    assert len(set(made)) == len(made)
    assert custom_id("salt", "r1", 0) == custom_id("salt", "r1", 0) != custom_id("other", "r1", 0)


# --- limits ------------------------------------------------------------------------------


async def test_batches_stay_within_the_request_limit(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """With at most 3 requests a batch (the simulator refusing more), 10 rows go in 3+3+3+1."""
    server = sim_server(batch_max_requests=3)
    job = _job(write_job, server, 10)
    outcome = await run_job(job, batch_limits=BatchLimits(max_requests=3))
    assert outcome.counts == {"ok": 10}
    assert _sizes(await _batches(server)) == [1, 3, 3, 3]


async def test_batches_stay_within_the_byte_limit(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """With a byte cap of about two requests (the simulator refusing more), every batch fits."""
    server = sim_server(batch_max_bytes=450)
    job = _job(write_job, server, 7)
    outcome = await run_job(job, batch_limits=BatchLimits(max_bytes=450))
    assert outcome.counts == {"ok": 7}
    records = _state(outcome.run_dir)["records"]
    assert len(records) == len(await _batches(server)) >= 3
    assert all(r["bytes"] <= 450 for r in records)
    assert sum(r["count"] for r in records) == 7


async def test_a_batch_the_api_finds_too_large_is_sent_in_halves(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """When the API's size limit is tighter than ours, a 413 splits the batch until it fits."""
    server = sim_server(batch_max_bytes=450)
    outcome = await run_job(_job(write_job, server, 7))
    assert outcome.counts == {"ok": 7}
    statuses = [r["status"] for r in _state(outcome.run_dir)["records"]]
    assert statuses.count("rejected") >= 1
    assert sum(_sizes(await _batches(server))) == 7


async def test_a_request_larger_than_any_batch_is_an_error_row(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """A request that cannot fit a batch of its own is an error row; nothing is sent."""
    server = sim_server()
    outcome = await run_job(_job(write_job, server, 2), batch_limits=BatchLimits(max_bytes=100))
    results = _results(outcome)
    assert outcome.exit_code == 1
    assert results["error_type"].to_list() == ["request_too_large"] * 2
    assert await _batches(server) == []


# --- failures ----------------------------------------------------------------------------


async def test_expired_errored_and_retried_requests(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """Expired and errored requests are error rows; retryable ones go again, up to max_attempts."""
    server = sim_server(
        batch_expire_match="r2:",
        faults=[
            {"kind": "invalid_request", "match": "r3:"},
            {"kind": "overloaded", "match": "r4:", "attempts": [1]},
            {"kind": "overloaded", "match": "r5:"},
        ],
    )
    outcome = await run_job(_job(write_job, server, 6))
    results = _results(outcome)
    assert outcome.exit_code == 1
    got = results.select("id", "status", "error_type", "attempts").rows()
    assert got == [
        ("r0", "ok", None, 1),
        ("r1", "ok", None, 1),
        ("r2", "error", "expired", 1),
        ("r3", "error", "invalid_request_error", 1),
        ("r4", "ok", None, 2),
        ("r5", "error", "overloaded_error", 3),
    ]
    assert results.filter(pl.col("status") == "error")["completion"].null_count() == 3
    attempts = pl.read_parquet(outcome.run_dir / "attempts.parquet").sort("id", "attempt")
    assert attempts.filter(pl.col("id") == "r4")["outcome"].to_list() == ["overloaded_error", "ok"]
    assert attempts.filter(pl.col("id") == "r5")["outcome"].to_list() == ["overloaded_error"] * 3
    assert _sizes(await _batches(server)) == [1, 2, 6]
    r4 = results.filter(pl.col("id") == "r4").row(0, named=True)
    assert r4["started_at"] < r4["finished_at"]  # first submitted → last batch ended


class RefuseCreates(httpx.AsyncBaseTransport):
    """A real transport that answers the first ``times`` batch creates with a 429 that names
    no retry-after, so that the client's own backoff decides the wait."""

    def __init__(self, times: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.left = times

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.left and request.method == "POST" and request.url.path == "/v1/messages/batches":
            self.left -= 1
            error = {"type": "rate_limit_error", "message": "Number of requests exceeded"}
            return httpx.Response(429, json={"type": "error", "error": error})
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_refused_creates_and_polling_wait_by_the_retry_backoff(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """Without a retry-after, the n-th refused create and each poll wait between 0 and
    min(max_backoff_s, initial * 2**(n-1)), fully jittered as requests' retries."""
    server = sim_server(batch_processing_s=0.5)
    job = _job(write_job, server, 4, retry={"initial_backoff_s": 0.05, "max_backoff_s": 0.4})
    polls: list[float] = []

    async def sleep(seconds: float) -> None:
        polls.append(seconds)
        await asyncio.sleep(seconds)

    with capture_logs() as logs:
        outcome = await run_job(job, transport=RefuseCreates(2), sleep=sleep)
    assert (outcome.exit_code, len(await _batches(server))) == (0, 1)
    refused = [e["wait_s"] for e in logs if e["event"] == "batchrun.batch.create_refused"]
    assert len(refused) == 2
    assert 0.0 <= refused[0] <= 0.05
    assert 0.0 <= refused[1] <= 0.1
    assert polls
    assert all(0.0 <= wait <= 0.4 for wait in polls)
    assert set(polls) - {0.05, 0.1, 0.2, 0.4}  # jittered, not the bare doubling


# --- crashes -----------------------------------------------------------------------------


def test_a_kill_during_polling_resumes_without_sending_twice(
    write_job: JobWriter, sim_server: StartSim, tmp_path: Path
) -> None:
    """SIGKILL while polling, then a rerun: no batch created twice; the rows are stream mode's."""
    server = sim_server(
        batch_processing_s=3.0, faults=[{"kind": "overloaded", "match": "r1:", "attempts": [1]}]
    )
    path = _job_file(write_job, server, name="killed")
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun.cli", str(path)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_dir = tmp_path / "killed"
    wait_until(
        lambda: any(r["status"] == "open" for r in _state(run_dir)["records"]),
        "open batch in the run's state",
        proc=proc,
    )
    polled = server.stats.requests_by_path.get(POLL_PATH, 0)
    wait_until(
        lambda: server.stats.requests_by_path.get(POLL_PATH, 0) >= polled + 2,
        "two more polls of the batch",
        proc=proc,
    )
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (run_dir / "results.parquet").exists()
    outcome = asyncio.run(run_job(load_job(path)))
    assert outcome.exit_code == 0
    assert outcome.sent == 1  # only the follow-up for r1's overload
    assert _sizes(asyncio.run(_batches(server))) == [1, 6]
    stream_job = _job(write_job, server, name="stream", request={"mode": "stream"})
    stream = _results(asyncio.run(run_job(stream_job)))
    assert _results(outcome).select(SAME).rows() == stream.select(SAME).rows()


@pytest.mark.parametrize("forward", [True, False], ids=["created", "never-arrived"])
async def test_a_lost_create_answer_is_reconciled_not_resent(
    write_job: JobWriter, sim_server: StartSim, forward: bool
) -> None:
    """A create call whose answer is lost: the batch list decides; exactly one batch is made."""
    server = sim_server()
    lossy = LoseAnswer("POST", "/v1/messages/batches", httpx.ReadError("lost"), forward=forward)
    outcome = await run_job(_job(write_job, server), transport=lossy)
    assert lossy.fired
    assert outcome.counts == {"ok": 6}
    assert _sizes(await _batches(server)) == [6]


async def test_a_crash_after_sending_adopts_the_batch_on_rerun(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """Dying before the batch id is known: the rerun adopts the batch; --fresh is refused."""
    server = sim_server(batch_processing_s=0.3)
    job = _job(write_job, server)
    with pytest.raises(Crash):
        await run_job(job, transport=LoseAnswer("POST", "/v1/messages/batches", Crash()))
    (record,) = _state(job.run_dir(datetime.now(UTC)))["records"]
    assert (record["status"], record["id"]) == ("intent", None)
    with pytest.raises(JobError, match="may still be running"):
        await run_job(job, fresh=True)
    outcome = await run_job(job)
    assert outcome.counts == {"ok": 6}
    (batch,) = await _batches(server)
    assert _state(outcome.run_dir)["records"][0]["id"] == batch["id"]


# --- cancel ------------------------------------------------------------------------------


async def test_cancel_while_a_run_polls(write_job: JobWriter, sim_server: StartSim) -> None:
    """--cancel beside a run: it collects finished rows ok, the rest `canceled`; exit 1."""
    # The six requests finish one every 2 s: the cancel, sent once one has, lands before the
    # last on a loaded host too (with one every 0.5 s it need not).
    server = sim_server(batch_processing_s=12.0)
    job = _job(write_job, server)
    running = asyncio.create_task(run_job(job))
    run_dir = job.run_dir(datetime.now(UTC)).resolve()

    def some_done() -> bool:
        records = _state(run_dir)["records"]
        return bool(records) and records[0]["request_counts"].get("succeeded", 0) >= 1

    await await_until(some_done, "finished request in the run's batch state")
    asked = await cancel_job(job)
    assert (asked.status, asked.exit_code) == ("cancel_requested", 0)
    outcome = await running
    assert (outcome.status, outcome.exit_code) == ("canceled", 1)
    results = _results(outcome)
    assert 1 <= results.filter(pl.col("status") == "ok").height < 6
    assert set(results.filter(pl.col("status") == "error")["error_type"]) == {"canceled"}
    (batch,) = await _batches(server)
    assert batch["request_counts"]["canceled"] == results.filter(pl.col("status") == "error").height


async def test_cancel_after_a_crash_then_retry_errors(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """--cancel after a crash collects `canceled` rows; only --retry-errors sends them again."""
    # The crash comes at the first poll and the cancel right after it; the six requests finish
    # one a second, so that the cancel lands before the last on a loaded host too, and how
    # many it canceled is read from the batch.
    server = sim_server(batch_processing_s=6.0)
    job = _job(write_job, server)
    poll = LoseAnswer("GET", r"/v1/messages/batches/[^/]+", Crash())
    with pytest.raises(Crash):
        await run_job(job, transport=poll)
    outcome = await cancel_job(job)
    assert (outcome.status, outcome.exit_code) == ("canceled", 1)
    canceled = _results(outcome).filter(pl.col("status") == "error")
    (batch,) = await _batches(server)
    assert canceled.height == batch["request_counts"]["canceled"] >= 1
    assert _results(outcome).filter(pl.col("status") == "ok").height == 6 - canceled.height
    assert set(canceled["error_type"]) == {"canceled"}
    again = await run_job(job)
    assert (again.sent, again.counts.get("error")) == (0, canceled.height)
    retried = await run_job(job, retry_errors=True)
    assert (retried.sent, retried.counts) == (canceled.height, {"ok": 6})
    assert _sizes(await _batches(server)) == sorted([canceled.height, 6])


def test_the_cancel_command_after_a_kill(
    write_job: JobWriter, sim_server: StartSim, tmp_path: Path
) -> None:
    """`batchrun JOB --cancel` after a kill: every row `canceled`, exit 1."""
    # The batch's six requests finish evenly over its processing time: long enough that none
    # finishes before the cancel on a loaded host (with 30 s the first one did, 5 s in).
    server = sim_server(batch_processing_s=3600.0)
    path = _job_file(write_job, server, name="abandoned")
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun.cli", str(path)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run_dir = tmp_path / "abandoned"
    wait_until(
        lambda: any(r["status"] == "open" for r in _state(run_dir)["records"]),
        "open batch in the run's state",
        proc=proc,
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(
        [sys.executable, "-m", "batchrun.cli", str(path), "--cancel"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "batchrun: canceled: 0 ok, 6 error" in done.stderr
    assert pl.read_parquet(run_dir / "results.parquet")["error_type"].to_list() == ["canceled"] * 6
    (batch,) = asyncio.run(_batches(server))
    assert batch["request_counts"]["canceled"] == 6


def test_cancel_of_a_stream_job_is_refused(write_job: JobWriter, sim_server: StartSim) -> None:
    """`batchrun JOB --cancel` on a stream-mode job: exit 2, saying why."""
    path = _job_file(write_job, sim_server(), request={"mode": "stream"})
    assert main([str(path), "--cancel"]) == 2


# --- cost --------------------------------------------------------------------------------


async def test_the_cost_line_in_run_json_and_the_report(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """run.json and the report price the tokens from the job's table: batch at half."""
    server = sim_server()
    prices = {"claude-sonnet-5-5": {"input": 3.0, "output": 15.0}}  # over the catalogue's
    job = load_job(_job_file(write_job, server, prices=prices))
    outcome = await run_job(job)
    results = _results(outcome)
    tokens_in, tokens_out = int(results["input_tokens"].sum()), int(results["output_tokens"].sum())
    stream_usd = (tokens_in * 3 + tokens_out * 15) / 1e6
    cost = json.loads((outcome.run_dir / "run.json").read_text())["cost"]
    assert cost["mode"] == "batch"
    assert (cost["input_tokens"], cost["output_tokens"]) == (tokens_in, tokens_out)
    assert cost["stream_usd"] == pytest.approx(stream_usd)
    assert cost["batch_usd"] == pytest.approx(stream_usd / 2)
    summary = summarize(load_run(outcome.run_dir))
    assert summary["cost"] == cost
    assert "in batches (this run: batch mode" in render_summary(summary)


# --- a non-streaming message as a completion ---------------------------------------------


@pytest.mark.parametrize("path", STREAM_FILES, ids=lambda p: p.stem)
def test_a_message_folds_like_its_stream(path: Path) -> None:
    """For every captured stream: the message it streams, read whole, is the same Completion."""
    fold = APIS["messages"].new_fold()
    for event in SSEDecoder().feed(path.read_bytes() + b"\n\n"):
        fold.feed(event)
    if not fold.done:
        pytest.skip("an incomplete stream has no message")
    streamed = fold.result()
    assert streamed.content_json is not None
    message = {
        "id": streamed.response_id,
        "model": streamed.response_model,
        "content": json.loads(streamed.content_json),
        "stop_reason": streamed.stop_reason,
        "stop_sequence": streamed.stop_sequence,
        "usage": json.loads(streamed.usage_json or "null"),
    }
    assert APIS["messages"].batch_completion(message) == streamed
