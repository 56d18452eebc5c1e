"""The run folder: private to its owner, links planted in it never written through, and what
--fresh clears."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import polars as pl
import pytest

from batchrun.job.schema import load_job
from batchrun.run import run_job
from tests.conftest import JobWriter, no_sleep, run_cli

VICTIM_TEXT = "a file of the user's that no run may touch\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text(VICTIM_TEXT, encoding="utf-8")
    return path


def _refused(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in done.stderr


def test_a_lock_file_planted_as_a_symlink_is_refused(
    write_job: JobWriter, tmp_path: Path, victim: Path
) -> None:
    """.batchrun.lock as a symbolic link: exit 2 naming it; the file it points at is unchanged."""
    job = write_job(rows=2)
    run_dir = tmp_path / "out"
    run_dir.mkdir(mode=0o700)
    (run_dir / ".batchrun.lock").symlink_to(victim)
    _refused(run_cli(job), ".batchrun.lock", "is a symbolic link", "remove it")
    assert victim.read_text(encoding="utf-8") == VICTIM_TEXT
    assert not (run_dir / "results.parquet").exists()


def test_a_lock_file_planted_as_a_hard_link_is_refused(
    write_job: JobWriter, tmp_path: Path, victim: Path
) -> None:
    """.batchrun.lock as a second name of another file: exit 2; that file is unchanged."""
    job = write_job(rows=2)
    run_dir = tmp_path / "out"
    run_dir.mkdir(mode=0o700)
    os.link(victim, run_dir / ".batchrun.lock")
    _refused(run_cli(job), ".batchrun.lock", "hard links")
    assert victim.read_text(encoding="utf-8") == VICTIM_TEXT


def test_temporary_names_planted_as_symlinks_are_never_written_through(
    write_job: JobWriter, tmp_path: Path, victim: Path
) -> None:
    """Symlinks under every temporary name a run used: the run completes, their target is
    unchanged, and the results read back whole."""
    job = write_job(rows=5)
    run_dir = tmp_path / "out"
    (run_dir / "parts").mkdir(parents=True, mode=0o700)
    planted = [
        ".results.parquet.tmp",
        ".attempts.parquet.tmp",
        ".run.json.tmp",
        "parts/.results-000001.parquet.tmp",
        "parts/.attempts-000001.parquet.tmp",
    ]
    for name in planted:
        (run_dir / name).symlink_to(victim)
    done = run_cli(job)
    assert done.returncode == 0, done.stderr
    assert victim.read_text(encoding="utf-8") == VICTIM_TEXT
    assert pl.read_parquet(run_dir / "results.parquet")["id"].sort().to_list() == [
        f"r{i}" for i in range(5)
    ]
    assert json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["counts"]["ok"] == 5


def test_a_folder_anyone_may_write_is_refused_unless_sticky(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """A run folder writable by others without the sticky bit: exit 2 naming it, nothing
    written; with the sticky bit (as /tmp has) the run goes ahead."""
    job = write_job(rows=2)
    run_dir = tmp_path / "out"
    run_dir.mkdir()
    run_dir.chmod(0o777)
    _refused(run_cli(job), str(run_dir), "writable by every user", "chmod o-w")
    assert list(run_dir.iterdir()) == []
    run_dir.chmod(0o1777)
    done = run_cli(job)
    assert done.returncode == 0, done.stderr


def test_a_folder_of_another_user_is_refused(write_job: JobWriter, tmp_path: Path) -> None:
    """A run folder owned by another user: exit 2 naming it and the owner; nothing written."""
    if os.geteuid() != 0:
        pytest.skip("giving a folder to another user needs root (CI runs the suite as root)")
    job = write_job(rows=2)
    run_dir = tmp_path / "out"
    run_dir.mkdir(mode=0o700)
    os.chown(run_dir, 65534, 65534)
    _refused(run_cli(job), str(run_dir), "belongs to another user (uid 65534")
    assert list(run_dir.iterdir()) == []


def test_a_parts_folder_planted_as_a_symlink_is_refused(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """parts/ as a symbolic link to another folder: exit 2; nothing is written there."""
    job = write_job(rows=2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_dir = tmp_path / "out"
    run_dir.mkdir(mode=0o700)
    (run_dir / "parts").symlink_to(elsewhere, target_is_directory=True)
    _refused(run_cli(job), "parts", "symbolic link")
    assert list(elsewhere.iterdir()) == []


async def test_fresh_clears_the_earlier_runs_telemetry(
    write_job: JobWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--fresh removes traces.jsonl and metrics.jsonl: after it they hold the new run only."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    job = load_job(write_job(rows=3, extra={"telemetry": {"traces": "file"}}))
    first = await run_job(job, sleep=no_sleep)
    traces, metrics = first.run_dir / "traces.jsonl", first.run_dir / "metrics.jsonl"
    assert first.run_id in traces.read_text(encoding="utf-8")
    with metrics.open("a", encoding="utf-8") as fh:
        fh.write('{"earlier": "run"}\n')
    second = await run_job(job, sleep=no_sleep, fresh=True)
    assert first.run_id not in traces.read_text(encoding="utf-8")
    assert second.run_id in traces.read_text(encoding="utf-8")
    assert '"earlier"' not in metrics.read_text(encoding="utf-8")
