"""Whole runs against the simulator on loopback: rows, attempts, run.json and exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.errors import JobError
from batchrun.job.schema import Job, load_job
from batchrun.run import RunOutcome, catch_signals, run_job
from batchrun.sim import SimServer
from tests.conftest import JobWriter, no_sleep

RESULT_COLUMNS = [
    "run_id",
    "id",
    "sample",
    "model",
    "api",
    "status",
    "completion",
    "content_json",
    "stop_reason",
    "stop_sequence",
    "input_tokens",
    "output_tokens",
    "error_type",
    "error_message",
    "http_status",
    "attempts",
    "request_id",
    "started_at",
    "finished_at",
    "queue_s",
    "retry_wait_s",
    "ttft_s",
    "e2e_s",
    "tpot_s",
    "output_tokens_per_s",
    "chunk_offsets_s",
    "trace_id",
]
ATTEMPT_COLUMNS = [
    "run_id",
    "id",
    "sample",
    "attempt",
    "outcome",
    "http_status",
    "request_id",
    "started_at",
    "finished_at",
    "backoff_s",
    "ttft_s",
    "output_tokens_seen",
    "retry_after_s",
]
StartSim = Callable[..., SimServer]


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


def _job(write_job: JobWriter, server: SimServer | None = None, rows: int = 6, **extra: Any) -> Job:
    if server is not None:
        extra.setdefault("endpoint", {})["base_url"] = server.base_url
    return load_job(write_job(rows=rows, extra=extra))


async def _run(job: Job, **kwargs: Any) -> tuple[RunOutcome, pl.DataFrame, pl.DataFrame]:
    outcome = await run_job(job, sleep=no_sleep, **kwargs)
    results = pl.read_parquet(outcome.run_dir / "results.parquet")
    attempts = pl.read_parquet(outcome.run_dir / "attempts.parquet")
    return outcome, results, attempts


async def test_a_clean_run_writes_the_contract(write_job: JobWriter) -> None:
    """A run on the in-process simulator: every column of the contract, every row ok, exit 0."""
    outcome, results, attempts = await _run(_job(write_job, rows=6))
    assert outcome.exit_code == 0
    assert outcome.status == "complete"
    assert results.columns[: len(RESULT_COLUMNS) + 2] == [
        *RESULT_COLUMNS,
        "request_hash",
        "input_row",
    ]
    assert attempts.columns[: len(ATTEMPT_COLUMNS)] == ATTEMPT_COLUMNS
    assert sorted(results["id"].to_list()) == [f"r{i}" for i in range(6)]
    assert results["status"].unique().to_list() == ["ok"]
    assert results["attempts"].unique().to_list() == [1]
    assert results["run_id"].n_unique() == 1
    assert results["trace_id"].n_unique() == 6
    for row in results.iter_rows(named=True):
        assert row["completion"]
        assert json.loads(row["content_json"])[0] == {"type": "text", "text": row["completion"]}
        assert row["stop_reason"] in ("end_turn", "max_tokens")
        assert row["input_tokens"] > 0
        assert row["output_tokens"] == len(row["chunk_offsets_s"])
        assert row["ttft_s"] == row["chunk_offsets_s"][0]
        assert 0 < row["ttft_s"] <= row["e2e_s"]
        assert row["chunk_offsets_s"] == sorted(row["chunk_offsets_s"])
        assert row["tpot_s"] == pytest.approx(
            (row["chunk_offsets_s"][-1] - row["chunk_offsets_s"][0]) / (row["output_tokens"] - 1)
        )
        assert row["output_tokens_per_s"] == pytest.approx(row["output_tokens"] / row["e2e_s"])
        assert row["started_at"] <= row["finished_at"]
        assert row["request_id"].startswith("req_")
        assert row["http_status"] == 200
        assert row["queue_s"] >= 0
        assert row["retry_wait_s"] == 0
    assert attempts.height == 6
    assert attempts["outcome"].unique().to_list() == ["ok"]
    manifest = json.loads((outcome.run_dir / "run.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["counts"] == {"ok": 6, "error": 0}
    cost = manifest["cost"]
    assert cost["input_tokens"] == results["input_tokens"].sum()
    assert cost["output_tokens"] == results["output_tokens"].sum()
    assert manifest["job"]["endpoint"]["api_key_env"] == "ANTHROPIC_API_KEY"
    assert "test-key" not in (outcome.run_dir / "run.json").read_text()
    assert not list((outcome.run_dir / "parts").iterdir())


async def test_the_same_job_gives_the_same_text(write_job: JobWriter) -> None:
    """The simulator is deterministic: two fresh runs give identical completions."""
    job = _job(write_job)
    _, first, _ = await _run(job)
    _, second, _ = await _run(job, fresh=True)
    assert first.sort("id")["completion"].to_list() == second.sort("id")["completion"].to_list()


async def test_legacy_completions(write_job: JobWriter, sim_server: StartSim) -> None:
    """api: complete sends the wrapped prompt to /v1/complete; usage is null, text is kept."""
    server = sim_server()
    outcome, results, _ = await _run(_job(write_job, server, request={"api": "complete"}))
    assert outcome.exit_code == 0
    assert server.stats.requests_by_path == {"/v1/complete": 6}
    assert results["api"].unique().to_list() == ["complete"]
    assert results["input_tokens"].null_count() == 6
    assert results["output_tokens"].null_count() == 6
    assert results["content_json"].null_count() == 6
    assert results["tpot_s"].null_count() == 6
    assert set(results["stop_reason"].to_list()) <= {"stop_sequence", "max_tokens"}
    assert all(results["completion"].to_list())
    assert all(len(offsets) > 0 for offsets in results["chunk_offsets_s"].to_list())


RETRYABLE = [
    ("overloaded", "overloaded_error"),
    ("overloaded_midstream", "overloaded_error"),
    ("rate_limited", "rate_limit_error"),
    ("server_error", "api_error"),
    ("bad_gateway", "http_error"),
    ("timeout_error", "timeout_error"),
    ("conflict", "conflict_error"),
    ("disconnect", "connection_error"),
    ("disconnect_midstream", "connection_error"),
    ("stall", "timeout"),
    ("stall_midstream", "timeout"),
    ("malformed", "stream_error"),
    ("truncated", "stream_error"),
]


@pytest.mark.parametrize("api", ["messages", "complete"])
@pytest.mark.parametrize(("kind", "outcome_type"), RETRYABLE)
async def test_every_transient_fault_is_retried_to_the_same_answer(
    write_job: JobWriter, sim_server: StartSim, api: str, kind: str, outcome_type: str
) -> None:
    """A fault on the first attempt is retried; the row is ok with the text of a clean run."""
    clean = sim_server()
    _, expected, _ = await _run(_job(write_job, clean, rows=3, request={"api": api}))
    # retry-after 0: within the job's tiny max_backoff_s (a longer one ends the row; see below).
    fault = {"kind": kind, "attempts": [1], "retry_after_s": 0}
    # The idle timeout ends a stalled first attempt; the clean second one must not meet it,
    # however long a loaded host holds up the simulator's thread (0.3 s was too near).
    server = sim_server(stall_s=4.0, faults=[fault])
    job = _job(
        write_job,
        server,
        rows=3,
        request={"api": api},
        timeouts={"idle_s": 1.0, "total_s": 8},
        output={"dir": "faulted"},
    )
    outcome, results, attempts = await _run(job)
    assert outcome.exit_code == 0, results["error_message"].to_list()
    assert results["status"].to_list() == ["ok"] * 3
    assert results["attempts"].to_list() == [2] * 3
    assert results.sort("id")["completion"].to_list() == expected.sort("id")["completion"].to_list()
    first = attempts.filter(pl.col("attempt") == 1)
    assert first["outcome"].to_list() == [outcome_type] * 3
    assert attempts.filter(pl.col("attempt") == 2)["outcome"].to_list() == ["ok"] * 3
    if kind == "rate_limited":
        assert first["retry_after_s"].drop_nulls().len() == 3
    if kind.endswith("_midstream") or kind in ("malformed", "truncated"):
        assert (first["output_tokens_seen"] > 0).all()
    assert server.stats.faults_by_kind == {kind: 3}


async def test_a_retry_after_beyond_max_backoff_ends_the_row(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """A 429 asking for longer than retry.max_backoff_s is an error row at once, not a hang."""
    server = sim_server(faults=[{"kind": "rate_limited", "retry_after_s": 30}])
    outcome, results, attempts = await _run(_job(write_job, server, rows=2))
    assert outcome.exit_code == 1
    assert results["error_type"].to_list() == ["rate_limit_error"] * 2
    assert results["attempts"].to_list() == [1, 1]
    assert attempts["retry_after_s"].to_list() == [30.0, 30.0]


async def test_a_bad_row_is_an_error_row_and_the_run_goes_on(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """A 400 for one row is not retried; that row is an error, the others ok; exit 1."""
    server = sim_server(faults=[{"kind": "invalid_request", "match": "spider"}])
    outcome, results, attempts = await _run(_job(write_job, server, rows=8))
    assert outcome.exit_code == 1
    bad = results.filter(pl.col("status") == "error")
    assert bad["id"].to_list() == ["r6"]
    assert bad.select("error_type", "http_status", "attempts", "completion").row(0) == (
        "invalid_request_error",
        400,
        1,
        None,
    )
    assert bad["error_message"][0]
    assert results.filter(pl.col("status") == "ok").height == 7
    assert attempts.filter(pl.col("id") == "r6").height == 1


async def test_retries_run_out_into_an_error_row(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """A request overloaded on every attempt ends as an error after max_attempts attempts."""
    server = sim_server(faults=[{"kind": "overloaded_midstream"}])
    outcome, results, attempts = await _run(_job(write_job, server, rows=2))
    assert outcome.exit_code == 1
    assert results["status"].to_list() == ["error", "error"]
    assert results["attempts"].to_list() == [3, 3]
    assert results["error_type"].to_list() == ["overloaded_error"] * 2
    assert results["completion"].null_count() == 2
    assert results["ttft_s"].null_count() == 2
    assert attempts.height == 6
    assert (results["retry_wait_s"] > 0).all()
    assert attempts.filter(pl.col("attempt") == 1)["backoff_s"].to_list() == [0.0, 0.0]


@pytest.mark.parametrize(
    "kind", ["unauthorized", "forbidden", "billing", "not_found", "spend_limit"]
)
async def test_fatal_errors_abort_the_run(
    write_job: JobWriter, sim_server: StartSim, kind: str
) -> None:
    """401/402/403/unknown model/spend limit: exit 3 after at most `concurrency` requests."""
    server = sim_server(faults=[{"kind": kind}])
    outcome, results, attempts = await _run(
        _job(write_job, server, rows=40, limits={"concurrency": 4})
    )
    assert outcome.exit_code == 3
    assert outcome.status == "aborted"
    assert outcome.message is not None
    assert server.stats.total_requests <= 4
    assert results.height == 0
    assert attempts.height == server.stats.total_requests
    manifest = json.loads((outcome.run_dir / "run.json").read_text())
    assert manifest["status"] == "aborted"


async def test_a_rerun_resumes_and_never_duplicates(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """A second run sends only what the first did not finish; each row appears once."""
    server = sim_server()
    job = _job(write_job, server, rows=10)
    first, _, _ = await _run(job, limit=4)
    assert first.counts == {"ok": 4}
    second, results, _ = await _run(job)
    assert server.stats.total_requests == 10
    assert second.counts == {"ok": 10}
    assert sorted(results["id"].to_list()) == sorted(f"r{i}" for i in range(10))
    assert results["run_id"].n_unique() == 2
    _third, results, _ = await _run(job, fresh=True)
    assert server.stats.total_requests == 20
    assert results["run_id"].n_unique() == 1


async def test_samples_give_one_row_each(write_job: JobWriter) -> None:
    """samples: 3 gives rows 0..2 for every input row."""
    _, results, _ = await _run(_job(write_job, rows=2, request={"samples": 3}))
    assert sorted(results.select("id", "sample").rows()) == [
        ("r0", 0),
        ("r0", 1),
        ("r0", 2),
        ("r1", 0),
        ("r1", 1),
        ("r1", 2),
    ]


async def test_a_missing_api_key_is_a_job_error(
    write_job: JobWriter, sim_server: StartSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real endpoint with its key variable unset fails before anything is sent."""
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    server = sim_server()
    with pytest.raises(JobError, match="ANTHROPIC_API_KEY"):
        await run_job(_job(write_job, server))
    assert server.stats.total_requests == 0


async def test_the_key_is_sent_as_the_api_expects(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """With api_key set on the simulator, the job's key from the environment is accepted."""
    server = sim_server(api_key="test-key")
    outcome, _, _ = await _run(_job(write_job, server, rows=2))
    assert outcome.exit_code == 0


def test_outputs_land_beside_the_job(write_job: JobWriter, tmp_path: Path) -> None:
    """output.dir is relative to the job file's folder."""
    job = _job(write_job)
    assert job.run_dir(datetime(2026, 1, 1, tzinfo=UTC)).parent == tmp_path


async def test_a_signal_is_heard_when_the_loops_wakeup_pipe_is_full() -> None:
    """Under load the loop's wakeup pipe fills up (each async generator the garbage collector
    finalises writes a byte to it), and loop.add_signal_handler then loses signals: SIGTERM
    did nothing. The run's handler still hears it, and puts the old handler back after."""
    loop = asyncio.get_running_loop()
    before = signal.getsignal(signal.SIGTERM)
    heard: list[signal.Signals] = []
    restore = catch_signals(loop, heard.append)
    try:
        for _ in range(10_000):
            loop._write_to_self()  # type: ignore[attr-defined]  # as call_soon_threadsafe does
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(200):
            if heard:
                break
            await asyncio.sleep(0.01)
    finally:
        restore()
    assert heard == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) == before
