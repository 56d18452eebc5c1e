"""An endpoint no attempt reaches stops the run (exit 69) and poisons nothing; transient error
rows are sent again by the next run, permanent ones only with --retry-errors."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.call.reachability import Reachability
from batchrun.errors import EXIT_UNAVAILABLE, EndpointUnreachable, RetryableError
from batchrun.job.schema import Job, load_job
from batchrun.models import Attempt, RunStatus
from batchrun.record.parquet import read_table
from batchrun.run import run_job
from batchrun.sim import SimServer
from tests.conftest import JobWriter, no_sleep

StartSim = Callable[..., SimServer]


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on: bound but not listening, so that a connection is
    refused, and held for the test, so that no other process takes it meanwhile (bound and
    closed at once, it could be a server's by the time the run connects)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """A server that accepts connections and never answers: every attempt times out."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()  # until the client gives up

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


def _job(write_job: JobWriter, url: str, rows: int = 20, **extra: Any) -> Job:
    return load_job(write_job(rows=rows, extra={"endpoint": {"base_url": url}, **extra}))


def _results(run_dir: Path) -> pl.DataFrame:
    return read_table(run_dir, "results")


@pytest.mark.parametrize("dead", ["closed port", "silent server"])
async def test_an_unreachable_endpoint_stops_the_run_with_69_and_records_nothing(
    write_job: JobWriter, sim_server: StartSim, silent_server: str, closed_port: int, dead: str
) -> None:
    """A closed port or a server that never answers: exit 69 soon after the window, a message
    naming the URL and the error, no result rows; the next run against a live server sends
    every row once."""
    url = f"http://127.0.0.1:{closed_port}" if dead == "closed port" else silent_server
    job = _job(write_job, url, timeouts={"connect_s": 0.2, "idle_s": 0.2, "total_s": 1})
    began = time.monotonic()
    outcome = await run_job(job, sleep=no_sleep, unreachable_s=1.0)
    took = time.monotonic() - began
    assert (outcome.exit_code, outcome.status) == (EXIT_UNAVAILABLE, RunStatus.UNREACHABLE)
    assert outcome.message is not None
    assert url in outcome.message
    assert ("connection_error" if dead == "closed port" else "timeout") in outcome.message
    assert took < 10, f"the run took {took:.1f} s to give up on a 1 s window"
    assert _results(outcome.run_dir).height == 0
    server = sim_server()
    again = await run_job(_job(write_job, server.base_url), sleep=no_sleep)
    assert (again.exit_code, again.sent) == (0, 20)
    rows = _results(again.run_dir)
    assert sorted(rows["id"]) == sorted(f"r{i}" for i in range(20))


async def test_errors_with_responses_are_not_an_unreachable_endpoint(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """An endpoint that answers, if only with 529s, is reachable: the rows end in error,
    exit 1, however short the window."""
    server = sim_server(faults=[{"kind": "overloaded"}])
    job = _job(write_job, server.base_url, rows=4)
    outcome = await run_job(job, sleep=no_sleep, unreachable_s=0.001)
    assert (outcome.exit_code, outcome.counts) == (1, {"error": 4})


async def test_a_long_stream_still_sending_keeps_the_endpoint_reachable(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """While one stream keeps sending content for longer than the window, other requests
    dropped before any response do not make the endpoint unreachable: exit 1, both rows."""
    server = sim_server(
        token_interval_s=0.05,
        min_output_tokens=60,
        max_output_tokens=60,
        faults=[{"kind": "disconnect", "match": "photosynthesis"}],
    )
    job = _job(write_job, server.base_url, rows=2, request={"max_tokens": 100})
    outcome = await run_job(job, sleep=no_sleep, unreachable_s=1.0)
    assert (outcome.exit_code, outcome.counts) == (1, {"ok": 1, "error": 1})


def test_a_response_ends_a_streak_and_only_a_window_long_streak_counts() -> None:
    """Failures to connect are a streak until any attempt gets a response; the endpoint is
    down only once a streak has lasted the window, and it is said once."""
    now = [0.0]
    told: list[EndpointUnreachable] = []
    reach = Reachability("http://x", window_s=30, clock=lambda: now[0], on_down=told.append)
    refused = Attempt(error=RetryableError("connection_error", "refused"))
    for at in (0.0, 10.0, 20.0):
        now[0] = at
        reach.saw(refused)
    now[0] = 29.0
    reach.saw(Attempt(http_status=529, error=RetryableError("overloaded_error", "busy")))
    now[0] = 45.0
    reach.saw(refused)
    reach.check()
    assert not told
    now[0] = 60.0
    reach.alive()  # content on a stream still open
    reach.saw(refused)
    now[0] = 75.0
    reach.check()
    assert not told
    now[0] = 90.0
    reach.check()
    reach.check()
    assert len(told) == 1
    assert "http://x" in str(told[0])


async def test_transient_error_rows_are_sent_again_and_permanent_ones_kept(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """A row that ran out of attempts on overloads is sent again by the next run; a row
    refused with a 400 is kept, until --retry-errors."""
    server = sim_server(
        faults=[
            {"kind": "overloaded", "match": "France", "attempts": [1, 2, 3]},
            {"kind": "invalid_request", "match": "sky", "attempts": [1]},
        ]
    )
    job = _job(write_job, server.base_url, rows=4)
    first = await run_job(job, sleep=no_sleep)
    assert first.counts == {"ok": 2, "error": 2}
    second = await run_job(job, sleep=no_sleep)
    assert (second.sent, second.counts) == (1, {"ok": 3, "error": 1})
    kept = _results(second.run_dir).filter(pl.col("status") == "error")
    assert kept["error_type"].to_list() == ["invalid_request_error"]
    third = await run_job(job, sleep=no_sleep)
    assert third.sent == 0
    fourth = await run_job(job, sleep=no_sleep, retry_errors=True)
    assert (fourth.sent, fourth.counts) == (1, {"ok": 4})
