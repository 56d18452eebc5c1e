"""Crash-safe runs: resume after kill -9, signals, the run-folder lock, a changed job."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from batchrun.errors import JobError, RunLockedError
from batchrun.job import load_job
from batchrun.runlock import RunLock
from batchrun.runner import run_job
from batchrun.sim import SimServer
from tests.conftest import JobWriter, no_sleep

StartSim = Callable[..., SimServer]
ENV = {**os.environ, "ANTHROPIC_API_KEY": "test-key"}


def _spawn(job: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchrun.cli", str(job), *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _results(run_dir: Path) -> pl.DataFrame:
    from batchrun.results import read_table

    return read_table(run_dir, "results")


def test_kill_9_at_random_points_loses_nothing_and_duplicates_nothing(
    write_job: JobWriter, sim_server: StartSim, tmp_path: Path
) -> None:
    """Three SIGKILLs at seeded random moments, then a rerun: every row once, none re-sent
    that was on disk before a kill, and the final files read back with polars."""
    server = sim_server(ttft_s=0.02, token_interval_s=0.001)
    rows = 400
    job = write_job(
        rows=rows,
        extra={
            "endpoint": {"base_url": server.base_url},
            "limits": {"concurrency": 4},
            "input": {"prompt": "{id}: {question}"},  # one body per row, for the server's count
        },
    )
    run_dir = tmp_path / "out"
    rng = random.Random(20261121)
    on_disk: dict[tuple[str, int], str] = {}  # (id, sample) -> run_id, as seen after each kill
    for _ in range(3):
        proc = _spawn(job)
        # Kill at a random moment once this run has written something (start-up time varies
        # with the machine's load; the point is to land mid-run).
        before = len(list(run_dir.glob("parts/results-*.parquet")))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(run_dir.glob("parts/results-*.parquet"))) > before:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))
        proc.kill()
        proc.communicate(timeout=30)
        now = _results(run_dir)
        for key, run_id in zip(
            now.select("id", "sample").iter_rows(), now["run_id"].to_list(), strict=True
        ):
            assert on_disk.setdefault(key, run_id) == run_id, f"{key} was sent again"
    assert 0 < len(on_disk) < rows, "the kills should land mid-run"
    proc = _spawn(job)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    final = pl.read_parquet(run_dir / "results.parquet")
    assert final.height == rows
    assert final.select("id", "sample").n_unique() == rows
    for key, run_id in zip(
        final.select("id", "sample").iter_rows(), final["run_id"].to_list(), strict=True
    ):
        if key in on_disk:
            assert run_id == on_disk[key]
    resent = server.stats.total_requests - rows
    # The simulator's own count of bodies it saw twice agrees: nothing else was sent again.
    assert server.stats.repeated_requests == resent
    # Only requests in flight (or finished but not yet checkpointed) at a kill are sent twice.
    assert 0 <= resent <= 3 * 4 * 10
    assert not list((run_dir / "parts").glob("*.parquet"))
    print(f"kill -9 x3: rows {rows}, lost 0, duplicated 0, re-sent {resent}")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_cleanly_and_the_rerun_completes(
    write_job: JobWriter, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    """SIGINT/SIGTERM: the documented exit code, finished rows on disk, run.json says
    interrupted; the next run sends only the rest."""
    job = write_job(
        rows=60,
        extra={"limits": {"concurrency": 2}, "sim": {"ttft_s": 0.05, "token_interval_s": 0.002}},
    )
    proc = _spawn(job)
    time.sleep(2.0)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == code, stderr
    first = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert 0 < first.height < 60
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    assert manifest["status"] == "interrupted"
    assert manifest["complete"] is False
    proc = _spawn(job)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    final = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert final.height == 60
    assert final["id"].n_unique() == 60


def test_the_grace_period_abandons_slow_streams_for_the_next_run(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """Streams still running when the grace period ends are not recorded, so resume sends them."""
    job = write_job(
        rows=4,
        extra={"limits": {"concurrency": 4}, "sim": {"ttft_s": 30, "token_interval_s": 0}},
    )
    proc = _spawn(job, "--grace-s", "0.2")
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr
    assert "batchrun.run.grace_expired" in stderr
    assert pl.read_parquet(tmp_path / "out" / "results.parquet").height == 0


def test_a_second_run_on_the_same_folder_is_refused(write_job: JobWriter, tmp_path: Path) -> None:
    """While a run holds the folder, another exits 75 with a message naming the holder."""
    job = write_job(rows=2)
    run_dir = tmp_path / "out"
    run_dir.mkdir()
    with RunLock(run_dir):
        done = subprocess.run(
            [sys.executable, "-m", "batchrun.cli", str(job)],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 75
        assert "another batchrun run is using this run folder" in done.stderr
        assert f"pid {os.getpid()}" in done.stderr
        with pytest.raises(RunLockedError):
            RunLock(run_dir).__enter__()
    assert not (run_dir / "results.parquet").exists()


def test_a_lock_left_by_a_killed_run_is_taken_over(write_job: JobWriter, tmp_path: Path) -> None:
    """A run killed with SIGKILL leaves no lock that blocks the next one."""
    job = write_job(rows=30, extra={"sim": {"ttft_s": 0.05}})
    proc = _spawn(job)
    time.sleep(1.5)
    proc.kill()
    proc.communicate(timeout=30)
    assert (tmp_path / "out" / ".batchrun.lock").exists()
    done = subprocess.run(
        [sys.executable, "-m", "batchrun.cli", str(job)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


async def test_a_changed_job_refuses_to_resume(
    write_job: JobWriter, sim_server: StartSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resuming after a change to what would be sent fails before sending, pointing to --fresh."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    server = sim_server()
    base = {"endpoint": {"base_url": server.base_url}}
    await run_job(load_job(write_job(rows=3, extra=base)), sleep=no_sleep, limit=2)
    sent = server.stats.total_requests
    changed = load_job(write_job(rows=3, extra={**base, "request": {"max_tokens": 99}}))
    with pytest.raises(JobError, match="--fresh") as info:
        await run_job(changed, sleep=no_sleep)
    assert "'r0' (sample 0)" in str(info.value)
    assert server.stats.total_requests == sent
    outcome = await run_job(changed, sleep=no_sleep, fresh=True)
    assert outcome.counts == {"ok": 3}


async def test_errors_are_retried_on_resume_only_when_asked(
    write_job: JobWriter, sim_server: StartSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rerun skips error rows; --retry-errors sends them again and replaces the row."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    server = sim_server(faults=[{"kind": "invalid_request", "match": "sky", "attempts": [1]}])
    job = load_job(write_job(rows=4, extra={"endpoint": {"base_url": server.base_url}}))
    first = await run_job(job, sleep=no_sleep)
    assert first.counts == {"ok": 3, "error": 1}
    again = await run_job(job, sleep=no_sleep)
    assert again.sent == 0
    retried = await run_job(job, sleep=no_sleep, retry_errors=True)
    assert retried.sent == 1
    assert retried.counts == {"ok": 4}
    assert retried.exit_code == 0
