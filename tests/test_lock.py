"""The run folder's lock: a second run is refused, a lock left by a killed run is taken over."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchrun.errors import RunLockedError
from batchrun.record.lock import RunLock
from tests.conftest import JobWriter, run_cli, wait_for_checkpoint

ENV = {**os.environ, "ANTHROPIC_API_KEY": "test-key"}


def test_a_second_run_on_the_same_folder_is_refused(write_job: JobWriter, tmp_path: Path) -> None:
    """While a run holds the folder, another exits 75 with a message naming the holder."""
    job = write_job(rows=2)
    run_dir = tmp_path / "out"
    run_dir.mkdir()
    with RunLock(run_dir):
        done = run_cli(job, timeout=60)
        assert done.returncode == 75
        assert "another batchrun run is using this run folder" in done.stderr
        assert f"pid {os.getpid()}" in done.stderr
        with pytest.raises(RunLockedError):
            RunLock(run_dir).__enter__()
    assert not (run_dir / "results.parquet").exists()


def test_a_lock_left_by_a_killed_run_is_taken_over(write_job: JobWriter, tmp_path: Path) -> None:
    """A run killed with SIGKILL leaves no lock that blocks the next one."""
    # One stream at a time, so that the run is still going when its first part appears.
    job = write_job(rows=30, extra={"limits": {"concurrency": 1}, "sim": {"ttft_s": 0.05}})
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun.cli", str(job)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_checkpoint(tmp_path / "out", proc)
    proc.kill()
    proc.communicate(timeout=30)
    assert (tmp_path / "out" / ".batchrun.lock").exists()
    done = run_cli(job, timeout=60)
    assert done.returncode == 0, done.stderr
