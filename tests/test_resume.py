"""Resuming: after kill -9 and signals, a changed job refused, and the resume plan itself."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from batchrun.apis import build_request
from batchrun.errors import JobError
from batchrun.job.schema import Job, load_job
from batchrun.load.inputs import iter_batches
from batchrun.load.resume import Done, pending_items, resume_plan
from batchrun.record.parquet import KeyHash, ResultsWriter, hash_keys
from batchrun.run import run_job
from batchrun.sim import SimServer
from tests.conftest import (
    JobWriter,
    checkpoint_parts,
    no_sleep,
    stored_result,
    wait_for_checkpoint,
    wait_until,
)

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
    from batchrun.record.parquet import read_table

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
        # Kill at a seeded random moment after this run has written something (start-up time
        # varies with the machine's load; the point is to land mid-run).
        wait_for_checkpoint(run_dir, proc, after=checkpoint_parts(run_dir))
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
    wait_for_checkpoint(tmp_path / "out", proc)
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
    write_job: JobWriter, sim_server: StartSim, tmp_path: Path
) -> None:
    """Streams still running when the grace period ends are not recorded, so resume sends them."""
    # A simulator in this process, so that the test sees the streams arrive.
    server = sim_server(ttft_s=30, token_interval_s=0)
    job = write_job(
        rows=4,
        extra={"endpoint": {"base_url": server.base_url}, "limits": {"concurrency": 4}},
    )
    proc = _spawn(job, "--grace-s", "0.2")
    wait_until(
        lambda: server.stats.requests_by_path.get("/v1/messages", 0) == 4,
        "four streams open at the simulator",
        proc=proc,
    )
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr
    assert "batchrun.run.grace_expired" in stderr
    assert pl.read_parquet(tmp_path / "out" / "results.parquet").height == 0


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


# The resume plan itself: which requests a rerun skips, found through 64-bit key hashes.

Key = tuple[str, int]
T0 = datetime(2026, 1, 2, tzinfo=UTC)


def collide(keys: list[str]) -> pl.Expr:
    return pl.col(keys[0]).is_null().cast(pl.UInt64).alias("_hash")  # 0 for every row


def by_sample(keys: list[str]) -> pl.Expr:
    return pl.col(keys[-1]).cast(pl.UInt64).alias("_hash")  # the sample (attempt) only


@pytest.fixture(params=["hash", "one hash for all", "hash by sample"])
def key_hash(request: pytest.FixtureRequest) -> KeyHash:
    """The folder's rows are found by a hash of (id, sample) first; under a hash that every key
    shares, or one that only tells samples apart, the keys must still decide."""
    return {"hash": hash_keys, "one hash for all": collide, "hash by sample": by_sample}[
        request.param
    ]


def _write_folder(
    job: Job, run_dir: Path, rows: dict[Key, str], hashes: dict[Key, str | None] | None = None
) -> None:
    """Checkpointed result rows for these keys (status as given), each with the request hash
    the job gives it, or the one in ``hashes``; a key the input lacks gets a made-up hash."""
    items = {(item.id, item.sample): item for batch in iter_batches(job) for item in batch}
    writer = ResultsWriter(run_dir)
    for (id_, sample), status in rows.items():
        item = items.get((id_, sample))
        digest = (
            build_request(job.request.api_spec, item, job.request.params)[1]
            if item is not None
            else "f" * 64
        )
        request_hash = (hashes or {}).get((id_, sample), digest)
        writer.add(stored_result(id_, sample, status, at=T0, request_hash=request_hash), [])
    writer.flush()


async def _pending(job: Job, done: Done, limit: int | None = None) -> list[Key]:
    return [(item.id, item.sample) async for item in pending_items(job, limit, done)]


# A folder of a 4-row job with 2 samples: ok, error, and a row the input no longer has.
DENSE = {
    ("r0", 0): "ok",
    ("r0", 1): "error",
    ("r1", 1): "ok",
    ("r2", 0): "ok",
    ("r3", 1): "error",
    ("gone", 0): "ok",
}
# One row per sample: under "hash by sample" each is alone with its hash, and the requests
# not done share it.
SPARSE = {("r0", 0): "ok", ("r1", 1): "error"}
# One row: under "one hash for all" every request shares its hash.
ONE = {("r1", 0): "ok"}


@pytest.mark.parametrize("folder", [DENSE, SPARSE, ONE], ids=["dense", "sparse", "one"])
@pytest.mark.parametrize("hashed", [True, False], ids=["hashed", "no request_hash"])
@pytest.mark.parametrize("retry_errors", [False, True])
async def test_the_plan_skips_exactly_the_requests_done(
    write_job: JobWriter,
    tmp_path: Path,
    key_hash: KeyHash,
    folder: dict[Key, str],
    hashed: bool,
    retry_errors: bool,
) -> None:
    """Done (ok, or error without --retry-errors) requests are skipped, every other is sent, in
    input order, whatever keys share a hash; a key sharing a hash with a stored row of another
    request is never taken for a changed job. (Rows without a request hash, as written before
    the column existed, are not compared: nothing but the keys can tell them apart.)"""
    job = load_job(write_job(rows=4, extra={"request": {"samples": 2}}))
    run_dir = tmp_path / "out"
    _write_folder(job, run_dir, folder, hashes=None if hashed else dict.fromkeys(folder))
    done = resume_plan(job, run_dir, None, retry_errors, key_hash=key_hash)
    skipped = {k for k, status in folder.items() if status == "ok" or not retry_errors}
    every = [(f"r{row}", sample) for row in range(4) for sample in range(2)]
    assert await _pending(job, done) == [k for k in every if k not in skipped]
    assert len(done) == len(skipped - {("gone", 0)})
    assert done.again == len([k for k in every if k in folder and k not in skipped])


async def test_a_folder_from_before_input_row_resumes(write_job: JobWriter, tmp_path: Path) -> None:
    """A results.parquet without the input_row column resumes: its rows are done, the rest is
    sent, and the compacted file keeps its rows (input_row null, after the new rows)."""
    job = load_job(write_job(rows=4))
    run_dir = tmp_path / "out"
    _write_folder(job, run_dir, {("r1", 0): "ok", ("r3", 0): "ok"})
    ResultsWriter(run_dir).finalize()
    old = pl.read_parquet(run_dir / "results.parquet").drop("input_row")
    old.write_parquet(run_dir / "results.parquet")
    outcome = await run_job(job, sleep=no_sleep)
    assert (outcome.exit_code, outcome.sent) == (0, 2)
    stored = pl.read_parquet(run_dir / "results.parquet")
    assert stored.select("id", "input_row").rows() == [
        ("r0", 0),
        ("r2", 2),
        ("r1", None),
        ("r3", None),
    ]


async def test_a_limit_plans_only_the_rows_it_sends(write_job: JobWriter, tmp_path: Path) -> None:
    """--limit reads only its rows; the count of requests done is theirs, not the folder's."""
    job = load_job(write_job(rows=4))
    _write_folder(job, tmp_path / "out", {("r0", 0): "ok", ("r2", 0): "ok", ("r3", 0): "ok"})
    done = resume_plan(job, tmp_path / "out", 3, False)
    assert len(done) == 2
    assert await _pending(job, done, limit=3) == [("r1", 0)]


async def test_an_empty_folder_plans_nothing_to_skip(write_job: JobWriter, tmp_path: Path) -> None:
    """No results: every request is sent, but those batch mode says are still in a batch."""
    job = load_job(write_job(rows=3))
    done = resume_plan(job, tmp_path / "out", None, False)
    assert len(done) == 0
    assert await _pending(job, done) == [("r0", 0), ("r1", 0), ("r2", 0)]
    assert await _pending(job, done.also({("default", "r1", 0)})) == [("r0", 0), ("r2", 0)]


async def test_requests_in_flight_in_batches_are_skipped_too(
    write_job: JobWriter, tmp_path: Path, key_hash: KeyHash
) -> None:
    """Batch mode adds the requests of batches not collected yet to what the folder has done."""
    job = load_job(write_job(rows=4))
    _write_folder(job, tmp_path / "out", {("r0", 0): "ok", ("r2", 0): "error"})
    done = resume_plan(job, tmp_path / "out", None, True, key_hash=key_hash).also(
        {("default", "r1", 0)}
    )
    assert await _pending(job, done) == [("r2", 0), ("r3", 0)]
    assert len(done) == 1


@pytest.mark.parametrize("retry_errors", [False, True])
def test_a_changed_job_is_named_whatever_keys_share_a_hash(
    write_job: JobWriter, tmp_path: Path, key_hash: KeyHash, retry_errors: bool
) -> None:
    """Every input request with a stored hash is compared, ok or error, with or without
    --retry-errors; the count and the first three in input order are named. Rows without a
    hash (written before the column existed) and rows the input lacks are not compared."""
    before = load_job(write_job(rows=6, extra={"request": {"samples": 2}}))
    rows = {(f"r{row}", sample): "ok" for row in range(6) for sample in range(2)}
    rows |= {("r1", 0): "error", ("gone", 0): "ok"}
    no_hash: dict[Key, str | None] = {("r0", 0): None, ("r0", 1): None}
    _write_folder(before, tmp_path / "out", rows, hashes=no_hash)
    changed = load_job(write_job(rows=6, extra={"request": {"samples": 2, "max_tokens": 99}}))
    with pytest.raises(JobError) as info:
        resume_plan(changed, tmp_path / "out", None, retry_errors, key_hash=key_hash)
    message = str(info.value)
    assert "holds results of a different job: 10 request(s) would now be sent differently" in (
        message
    )
    examples = "e.g. 'r1' (sample 0), 'r1' (sample 1), 'r2' (sample 0). Run with --rerun-changed"
    assert examples in message


def test_one_changed_request_among_many_is_found(
    write_job: JobWriter, tmp_path: Path, key_hash: KeyHash
) -> None:
    """A single stored hash that differs from what would be sent refuses the resume."""
    job = load_job(write_job(rows=5))
    rows = {(f"r{row}", 0): "ok" for row in range(5)}
    _write_folder(job, tmp_path / "out", rows, hashes={("r3", 0): "0" * 64})
    with pytest.raises(JobError, match=r"1 request\(s\) .* e\.g\. 'r3' \(sample 0\)\. Run"):
        resume_plan(job, tmp_path / "out", None, False, key_hash=key_hash)
    _write_folder(job, tmp_path / "out", {("r3", 0): "ok"})  # the later row wins
    assert len(resume_plan(job, tmp_path / "out", None, False, key_hash=key_hash)) == 5


async def test_inputs_of_several_files_resume_by_key(
    write_job: JobWriter, tmp_path: Path, key_hash: KeyHash
) -> None:
    """A glob of input files: requests are planned across the files, in file order."""
    path = write_job(rows=1, extra={"input": {"path": "data-*.csv"}, "request": {"samples": 2}})
    for name, ids in (("data-b.csv", ["b0", "b1"]), ("data-a.csv", ["a0", "a1", "a2"])):
        lines = ["id,question", *(f"{i},What is {i}?" for i in ids)]
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    job = load_job(path)
    folder = {("a0", 0): "ok", ("a0", 1): "ok", ("a2", 1): "ok", ("b0", 0): "ok", ("b1", 1): "ok"}
    _write_folder(job, tmp_path / "out", folder)
    done = resume_plan(job, tmp_path / "out", None, False, key_hash=key_hash)
    assert len(done) == 5
    assert await _pending(job, done) == [("a1", 0), ("a1", 1), ("a2", 0), ("b0", 1), ("b1", 0)]


async def test_an_input_that_changes_after_the_plan_stops_the_run(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """The plan is a flag per request in input order: if the input then holds other requests,
    nothing is skipped by mistake; the run stops with an error."""
    job = load_job(write_job(rows=4))
    _write_folder(job, tmp_path / "out", {("r0", 0): "ok"})
    done = resume_plan(job, tmp_path / "out", None, False)
    lines = ["id,question", "r9,What is r9?", "r1,x", "r2,y", "r3,z"]
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(JobError, match="the input changed while the run started"):
        await _pending(job, done)


async def test_the_plan_does_not_depend_on_how_the_input_is_read(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """Requests are planned and checked in blocks of a fixed count, whatever batches the input
    comes in: a plan made from batches of one size applies to batches of another."""
    job = load_job(write_job(rows=5, extra={"request": {"samples": 2}}))
    folder = {("r0", 1): "ok", ("r1", 0): "ok", ("r1", 1): "ok", ("r3", 0): "ok", ("r4", 1): "ok"}
    _write_folder(job, tmp_path / "out", folder)
    done = resume_plan(job, tmp_path / "out", None, False, block=3)
    every = [(f"r{row}", sample) for row in range(5) for sample in range(2)]
    for rows in (1, 2, 1000):
        blocks = list(done.filter(job, iter_batches(job, batch_rows=rows)))
        assert [len(block) for block in blocks] == [1, 2, 2, 0]  # blocks of 3, less the done
        assert [(i.id, i.sample) for block in blocks for i in block] == [
            k for k in every if k not in folder
        ]
