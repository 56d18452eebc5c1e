"""Damaged files in a run folder: a corrupt checkpoint part is quarantined and its rows sent
again; a damaged final file stops the run (exit 2) before anything is sent."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from structlog.testing import capture_logs

from batchrun.errors import JobError
from batchrun.job.schema import load_job
from batchrun.record.parquet import ResultsWriter, read_table
from batchrun.report.load import load_run
from batchrun.run import run_job
from batchrun.sim import SimServer
from tests.conftest import JobWriter, no_sleep, run_cli, stored_result

StartSim = Callable[..., SimServer]
T0 = datetime(2026, 1, 2, tzinfo=UTC)


def _corrupt_data(path: Path) -> None:
    """Overwrite the first page header with garbage; the footer stays valid."""
    data = bytearray(path.read_bytes())
    data[4:52] = b"\xff" * 48
    path.write_bytes(bytes(data))
    pl.read_parquet_schema(path)  # the footer still reads ...
    with pytest.raises(pl.exceptions.ComputeError):
        pl.read_parquet(path)  # ... the data does not


def _two_parts(run_dir: Path) -> tuple[Path, Path]:
    """Results of r0-r2 in a first part, r3-r5 in a second, stored by an earlier run "r1"."""
    writer = ResultsWriter(run_dir)
    for ids in (["r0", "r1", "r2"], ["r3", "r4", "r5"]):
        for id_ in ids:
            writer.add(stored_result(id_, at=T0), [])
        writer.flush()
    first, second = sorted((run_dir / "parts").glob("results-*.parquet"))
    return first, second


@pytest.mark.parametrize("named", ["with its checksum", "as written before checksums"])
async def test_a_corrupt_part_is_quarantined_and_its_rows_sent_again(
    write_job: JobWriter,
    sim_server: StartSim,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    named: str,
) -> None:
    """A part whose footer reads but whose data does not: the resume warns naming it, moves it
    to parts/quarantine/, sends exactly its rows again and keeps the others."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    server = sim_server()
    job = load_job(write_job(rows=6, extra={"endpoint": {"base_url": server.base_url}}))
    run_dir = tmp_path / "out"
    bad, _ = _two_parts(run_dir)
    if named == "as written before checksums":
        bad = bad.rename(bad.with_name("results-000001.parquet"))
    _corrupt_data(bad)
    with capture_logs() as logs:
        outcome = await run_job(job, sleep=no_sleep)
    assert outcome.exit_code == 0
    assert outcome.sent == 3
    assert server.stats.total_requests == 3
    (warning,) = [e for e in logs if e["event"] == "batchrun.results.part_quarantined"]
    assert warning["path"] == str(bad)
    assert warning["log_level"] == "warning"
    assert (run_dir / "parts" / "quarantine" / bad.name).read_bytes()[4:52] == b"\xff" * 48
    final = pl.read_parquet(run_dir / "results.parquet").sort("id")
    assert final["id"].to_list() == [f"r{i}" for i in range(6)]
    resent = final.filter(pl.col("run_id") != "r1")["id"].to_list()
    assert resent == ["r0", "r1", "r2"]


def test_a_report_skips_a_corrupt_part_without_moving_it(tmp_path: Path) -> None:
    """Reading a folder for a report leaves a corrupt part where it is, with a warning, and
    reads the rest."""
    bad, _ = _two_parts(tmp_path)
    _corrupt_data(bad)
    with capture_logs() as logs:
        run = load_run(tmp_path)
    assert sorted(run.results["id"].to_list()) == ["r3", "r4", "r5"]
    assert bad.exists()
    assert any(e["event"] == "batchrun.results.unreadable_part" for e in logs)


def test_a_bit_flipped_part_fails_its_checksum(tmp_path: Path) -> None:
    """One changed byte anywhere in a part, even one polars would read without complaint, is
    found by the checksum its name carries."""
    bad, _ = _two_parts(tmp_path)
    data = bytearray(bad.read_bytes())
    at = data.index(b"r1")  # a value in the id column's dictionary, inside the data
    data[at + 1] = ord("9")
    bad.write_bytes(bytes(data))
    assert read_table(tmp_path, "results")["id"].to_list() == ["r3", "r4", "r5"]


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize(
    ("damage", "what"),
    [(_truncate, "is truncated"), (_corrupt_data, "its data does not decode")],
    ids=["truncated", "corrupt data"],
)
def test_a_damaged_results_file_stops_the_run_before_sending(
    write_job: JobWriter,
    sim_server: StartSim,
    tmp_path: Path,
    damage: Callable[[Path], None],
    what: str,
) -> None:
    """A truncated or corrupt results.parquet: exit 2 naming the file, what is wrong and the
    two ways on (restore it, or --fresh); nothing sent; --fresh then runs the job whole."""
    server = sim_server()
    job = write_job(rows=4, extra={"endpoint": {"base_url": server.base_url}})
    results = tmp_path / "out" / "results.parquet"
    assert run_cli(job).returncode == 0
    damage(results)
    damaged = results.read_bytes()
    done = run_cli(job)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    for fragment in (str(results), what, "restore the file", "--fresh"):
        assert fragment in done.stderr
    assert server.stats.total_requests == 4
    assert results.read_bytes() == damaged
    fresh = run_cli(job, "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert server.stats.total_requests == 8
    assert pl.read_parquet(results).height == 4


def test_a_report_on_a_truncated_results_file_names_it(tmp_path: Path) -> None:
    """`batchrun report` on a folder whose results.parquet is truncated: a JobError naming it."""
    writer = ResultsWriter(tmp_path)
    writer.add(stored_result("a", at=T0), [])
    writer.finalize()
    _truncate(tmp_path / "results.parquet")
    with pytest.raises(JobError, match=r"results\.parquet is damaged: it is truncated"):
        load_run(tmp_path)


def test_a_truncated_attempts_file_is_refused_too(write_job: JobWriter, tmp_path: Path) -> None:
    """The resume plan refuses a folder whose attempts.parquet is truncated, naming that file."""
    from batchrun.load.resume import resume_plan

    job = load_job(write_job(rows=2))
    run_dir = tmp_path / "out"
    writer = ResultsWriter(run_dir)
    writer.add(stored_result("r0", at=T0), [])
    writer.finalize()
    _truncate(run_dir / "attempts.parquet")
    with pytest.raises(JobError, match=r"attempts\.parquet is damaged: .* --fresh"):
        resume_plan(job, run_dir, None, False)
