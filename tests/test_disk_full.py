"""A run folder on a full disk (a small tmpfs): checkpoints that cannot be written stop new
requests and end the run with exit 74; what was written stays readable; the next run
resumes exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import polars as pl
import pytest
from structlog.testing import capture_logs

from batchrun.errors import EXIT_IOERR, RunFolderError
from batchrun.job.schema import Job, load_job
from batchrun.models import RunStatus
from batchrun.record.files import write_temp
from batchrun.record.parquet import ResultsWriter, read_table
from batchrun.run import run_job
from batchrun.sim import SimServer
from tests.conftest import JobWriter, await_until, no_sleep, stored_result

StartSim = Callable[..., SimServer]
Mount = Callable[[str], Path]


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Mount]:
    """Mount a tmpfs of the given size (``mount -o size=...``); unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the CI runs the tests as root)")
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"tmpfs{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


def _fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last byte; the filler's path."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for size in (65536, 4096, 1):  # down to the last byte
            with contextlib.suppress(OSError):
                while fh.write(b"\0" * size):
                    pass
    return filler


def _job(write_job: JobWriter, server: SimServer, run_dir: Path, rows: int) -> Job:
    extra: dict[str, Any] = {
        "endpoint": {"base_url": server.base_url},
        "output": {"dir": str(run_dir)},
    }
    return load_job(write_job(rows=rows, extra=extra))


def _temporaries(run_dir: Path) -> list[Path]:
    return [*run_dir.glob(".*.tmp"), *run_dir.glob("parts/.*.tmp")]


@pytest.mark.parametrize("space_comes_back", [False, True], ids=["stays full", "freed"])
async def test_a_full_disk_stops_new_requests_and_the_next_run_resumes_exactly_once(
    write_job: JobWriter, sim_server: StartSim, tmpfs: Mount, space_comes_back: bool
) -> None:
    """Once a checkpoint fails no request starts (at most `concurrency` after it); space that
    comes back lets the run go on to exit 0; space that does not ends it with exit 74 and one
    paragraph naming the folder and ENOSPC, the parts readable, no temporary file left; the
    next run sends exactly the rows not on disk."""
    rows, concurrency = 1500, 4
    server = sim_server(ttft_s=0.01)
    run_dir = tmpfs("4m") / "run"
    job = _job(write_job, server, run_dir, rows)
    with capture_logs() as logs:

        def logged(event: str, times: int = 1) -> Callable[[], bool]:
            return lambda: sum(e["event"] == event for e in logs) >= times or run.done()

        run = asyncio.create_task(run_job(job, sleep=no_sleep, write_retry_s=1.5))
        await await_until(lambda: any(run_dir.glob("parts/results-*")), "a first checkpoint")
        filler = await asyncio.to_thread(_fill, run_dir.parent)
        await await_until(logged("batchrun.checkpoint.write_failed"), "a failed write")
        sent_at_failure = server.stats.total_requests
        if space_comes_back:
            # Two more failed tries: the run has waited with the disk full for a while.
            await await_until(logged("batchrun.checkpoint.still_failing", 2), "two more tries")
            assert server.stats.total_requests - sent_at_failure <= concurrency
            filler.unlink()
            outcome = await run
            assert (outcome.exit_code, outcome.counts) == (0, {"ok": rows})
            assert server.stats.total_requests == rows
            return
        outcome = await run
    sent = server.stats.total_requests
    assert sent - sent_at_failure <= concurrency
    assert (outcome.exit_code, outcome.status) == (EXIT_IOERR, RunStatus.WRITE_FAILED)
    assert outcome.message is not None
    assert str(run_dir) in outcome.message
    assert "ENOSPC" in outcome.message
    assert _temporaries(run_dir) == []
    on_disk = read_table(run_dir, "results")
    assert 0 < on_disk.height < rows
    assert outcome.counts == {"ok": on_disk.height}
    filler.unlink()
    again = await run_job(job, sleep=no_sleep)
    assert (again.exit_code, again.sent) == (0, rows - on_disk.height)
    assert server.stats.total_requests == sent + rows - on_disk.height
    final = pl.read_parquet(run_dir / "results.parquet")
    assert final.height == rows
    assert final["id"].n_unique() == rows


async def test_a_full_disk_at_compaction_exits_74_and_keeps_the_parts(
    write_job: JobWriter, sim_server: StartSim, tmpfs: Mount
) -> None:
    """Parts that fit but whose compaction does not: exit 74 naming the folder and ENOSPC,
    the parts still readable, no temporary file; with room, the next run compacts them."""
    rows = 70
    server = sim_server()
    run_dir = tmpfs("1m") / "run"
    job = _job(write_job, server, run_dir, rows)
    writer = ResultsWriter(run_dir)
    at = datetime(2026, 1, 2, tzinfo=UTC)
    for start in range(0, rows, 10):
        # ~9 kB a row that no compression shrinks: the parts take ~630 kB of the 1 MB, and
        # compacting them needs as much again.
        part = [
            stored_result(f"r{i}", at=at, completion=os.urandom(9000).hex())
            for i in range(start, start + 10)
        ]
        writer.write_part({"results": part, "attempts": []})
    outcome = await run_job(job, sleep=no_sleep)
    assert (outcome.exit_code, outcome.status) == (EXIT_IOERR, RunStatus.WRITE_FAILED)
    assert outcome.message is not None
    assert str(run_dir) in outcome.message
    assert "ENOSPC" in outcome.message
    assert outcome.sent == 0
    assert _temporaries(run_dir) == []
    assert read_table(run_dir, "results").height == rows
    remount = ["mount", "-o", "remount,size=4m", str(run_dir.parent)]
    await asyncio.to_thread(subprocess.run, remount, check=True)
    again = await run_job(job, sleep=no_sleep)
    assert (again.exit_code, again.sent) == (0, 0)
    assert pl.read_parquet(run_dir / "results.parquet").height == rows
    assert server.stats.total_requests == 0


async def test_a_signal_while_checkpoints_fail_ends_the_run_without_waiting_out_the_retries(
    write_job: JobWriter, sim_server: StartSim, tmpfs: Mount
) -> None:
    """SIGTERM while writes fail: requests in flight finish, the write is tried once more and
    the run exits 74 at once, not after the whole retry bound (here 60 s)."""
    server = sim_server(ttft_s=0.01)
    run_dir = tmpfs("4m") / "run"
    job = _job(write_job, server, run_dir, rows=1500)
    with capture_logs() as logs:
        run = asyncio.create_task(run_job(job, sleep=no_sleep, write_retry_s=60))
        await await_until(lambda: any(run_dir.glob("parts/results-*")), "a first checkpoint")
        await asyncio.to_thread(_fill, run_dir.parent)
        await await_until(
            lambda: (
                any(e["event"] == "batchrun.checkpoint.write_failed" for e in logs) or run.done()
            ),
            "a failed write",
        )
        began = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        outcome = await run
    took = time.monotonic() - began
    assert (outcome.exit_code, outcome.status) == (EXIT_IOERR, RunStatus.WRITE_FAILED)
    assert took < 30, f"the run took {took:.0f} s to end after SIGTERM"


def _write_until_refused_then_lose_the_errno(fh: BinaryIO) -> None:
    """What polars' Parquet writer does on a full disk when the failing write is in its footer:
    the OS refuses a write (ENOSPC) and the error raised carries no OS error at all."""
    try:
        while True:
            fh.write(b"\1" * 65536)
            fh.flush()
    except OSError:
        pass
    raise pl.exceptions.ComputeError(
        "parquet: File out of specification: Invalid thrift: transport error"
    )


def test_a_full_disk_whose_os_error_polars_lost_is_still_reported_as_enospc(
    tmpfs: Mount,
) -> None:
    """The lost errno is recovered from the file system left without a free block; the
    temporary file is gone; the run's one-paragraph error names ENOSPC and the full disk."""
    folder = tmpfs("1m")
    with pytest.raises(OSError, match="No space left") as raised:
        write_temp(folder, "results.parquet", _write_until_refused_then_lose_the_errno)
    assert raised.value.errno == errno.ENOSPC
    assert isinstance(raised.value.__cause__, pl.exceptions.ComputeError)
    assert list(folder.iterdir()) == []
    message = str(RunFolderError.writing(folder, "writing a checkpoint", raised.value))
    assert "ENOSPC" in message
    assert "The disk is full" in message


def test_an_io_error_on_a_disk_with_room_is_not_called_a_full_disk(tmpfs: Mount) -> None:
    """The same lost-errno error where the file system still has room is passed on as it is
    (an I/O error, not a full disk)."""
    folder = tmpfs("1m")

    def lose(fh: BinaryIO) -> None:
        fh.write(b"\1" * 4096)
        raise pl.exceptions.ComputeError(
            "parquet: File out of specification: Invalid thrift: transport error"
        )

    with pytest.raises(pl.exceptions.ComputeError):
        write_temp(folder, "results.parquet", lose)
    assert list(folder.iterdir()) == []
