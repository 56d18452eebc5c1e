"""The command line as users and cron call it: a real subprocess, its stderr and exit code."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl

from tests.conftest import JobWriter, wait_for_checkpoint

ENV = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}


def batchrun(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchrun.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        check=False,
    )


def test_help_explains_every_command() -> None:
    """--help names the commands and the exit codes, on stdout, exit 0."""
    done = batchrun("--help")
    assert done.returncode == 0
    for word in ("validate", "sim", "--set", "--limit", "--fresh", "130/143"):
        assert word in done.stdout
    for sub in ("validate", "sim"):
        assert batchrun(sub, "--help").returncode == 0


def test_a_run_on_the_simulator(write_job: JobWriter, tmp_path: Path) -> None:
    """`batchrun JOB` with base_url sim needs no key, exits 0, and prints nothing on stdout."""
    done = batchrun(write_job(rows=5))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "complete: 5 ok, 0 error" in done.stderr.splitlines()[-1]
    assert pl.read_parquet(tmp_path / "out" / "results.parquet").height == 5
    logs = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert {"batchrun.run.started", "batchrun.run.finished"} <= {e["event"] for e in logs}


def test_set_and_limit(write_job: JobWriter, tmp_path: Path) -> None:
    """--set overrides a key by its dotted path; --limit keeps the first N rows."""
    done = batchrun(
        write_job(rows=5),
        "--limit",
        "2",
        "--set",
        "request.samples=2",
        "--set",
        "output.dir=elsewhere",
    )
    assert done.returncode == 0, done.stderr
    assert pl.read_parquet(tmp_path / "elsewhere" / "results.parquet").height == 4


def test_validate_sends_nothing_and_summarises(write_job: JobWriter, tmp_path: Path) -> None:
    """validate prints a summary on stdout, exit 0, and creates no run folder."""
    done = batchrun("validate", write_job(rows=7))
    assert done.returncode == 0, done.stderr
    assert "7 input rows" in done.stdout
    assert not (tmp_path / "out").exists()


def test_an_invalid_job_is_exit_2_without_a_traceback(write_job: JobWriter, tmp_path: Path) -> None:
    """An unknown key: exit 2, a message naming the key and a suggestion, no run folder."""
    job = write_job()
    job.write_text(job.read_text().replace("concurrency:", "concurency:"), encoding="utf-8")
    for args in (("validate", job), (job,)):
        done = batchrun(*args)
        assert done.returncode == 2
        assert "concurency" in done.stderr
        assert "concurrency" in done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_missing_key_for_a_real_endpoint_is_exit_2(write_job: JobWriter) -> None:
    """Pointing at a URL without the key variable set fails before sending, naming the variable."""
    done = batchrun(write_job(), "--set", "endpoint.base_url=http://127.0.0.1:9")
    assert done.returncode == 2
    assert "ANTHROPIC_API_KEY" in done.stderr


def test_sigterm_stops_cleanly_and_a_rerun_resumes(write_job: JobWriter, tmp_path: Path) -> None:
    """SIGTERM: exit 143 with the finished rows on disk; running again completes the rest."""
    job = write_job(
        rows=40,
        extra={"limits": {"concurrency": 2}, "sim": {"ttft_s": 0.05, "token_interval_s": 0.002}},
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun.cli", str(job)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_checkpoint(tmp_path / "out", proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr
    first = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert 0 < first.height < 40
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    assert manifest["status"] == "interrupted"
    done = batchrun(job)
    assert done.returncode == 0, done.stderr
    final = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert final.height == 40
    assert final["id"].n_unique() == 40


def test_run_is_an_explicit_command_too(write_job: JobWriter, tmp_path: Path) -> None:
    """`batchrun run JOB` is `batchrun JOB`; a job file named `run` is reached as ./run."""
    done = batchrun("run", write_job(rows=3), "--fresh")
    assert done.returncode == 0, done.stderr
    assert "complete: 3 ok, 0 error" in done.stderr.splitlines()[-1]
    write_job(rows=2).rename(tmp_path / "run")
    for args in (("./run", "--fresh"), ("run", "run", "--fresh")):
        named = subprocess.run(
            [sys.executable, "-m", "batchrun.cli", *args],
            cwd=tmp_path,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert named.returncode == 0, named.stderr
        assert "complete: 2 ok, 0 error" in named.stderr.splitlines()[-1]


def test_output_options_go_before_or_after_the_command(write_job: JobWriter) -> None:
    """-q, -v and --log-format are taken by every command, on either side of its word."""
    job = write_job(rows=2)
    for args in (("-q", "validate", job), ("validate", job, "-v"), ("--log-format=json", "run")):
        done = batchrun(*args, job) if args[-1] == "run" else batchrun(*args)
        assert done.returncode == 0, (args, done.stderr)
    for sub in ("run", "validate", "sim", "report"):
        shown = batchrun(sub, "--help").stdout
        assert all(flag in shown for flag in ("--quiet", "--verbose", "--log-format")), sub
    assert batchrun("-q", "-v", job).returncode == 2  # one or the other


FAULTY = {"retry": {"max_attempts": 8}, "sim": {"faults": [{"kind": "overloaded", "rate": 0.3}]}}


def test_off_a_terminal_logs_are_json_lines_with_every_retry(write_job: JobWriter) -> None:
    """Not a terminal (cron): JSON lines, one batchrun.request.retry_scheduled per retry, and
    the summary as the last line; no live line."""
    done = batchrun(write_job(rows=20, extra=FAULTY))
    assert done.returncode == 0, done.stderr
    *logs, last = done.stderr.splitlines()
    events = [json.loads(line)["event"] for line in logs]
    assert events.count("batchrun.request.retry_scheduled") > 0
    assert "batchrun.run.finished" in events
    assert last.startswith("batchrun: complete: 20 ok")


def test_log_format_console_off_a_terminal_leaves_out_request_detail(
    write_job: JobWriter,
) -> None:
    """--log-format console into a pipe: readable lines, the run's own but none per retry."""
    done = batchrun(write_job(rows=20, extra=FAULTY), "--log-format", "console")
    assert done.returncode == 0, done.stderr
    assert not any(line.startswith("{") for line in done.stderr.splitlines())
    assert "batchrun.run.started" in done.stderr
    assert "retry_scheduled" not in done.stderr
    verbose = batchrun(write_job(rows=20, extra=FAULTY), "--log-format", "console", "-v", "--fresh")
    assert "batchrun.request.retry_scheduled" in verbose.stderr


def test_quiet_off_a_terminal_prints_the_summary_alone(write_job: JobWriter) -> None:
    """-q into a pipe: stderr is the closing summary line and nothing else."""
    done = batchrun(write_job(rows=20, extra=FAULTY), "-q")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [done.stderr.splitlines()[-1]]
    assert re.match(r"batchrun: complete: 20 ok, 0 error; cost \$[0-9.]+; results in ", done.stderr)


def test_run_json_records_the_options_and_a_limit(write_job: JobWriter, tmp_path: Path) -> None:
    """--limit 2 of 5 rows: run.json holds the options, both row counts and limited: true, and
    the summary line says `2 of 5 rows (--limit)`; the full run after it says limited: false."""
    job = write_job(rows=5)
    done = batchrun(job, "--limit", "2", "--fresh")
    assert done.returncode == 0, done.stderr
    assert re.search(
        r"complete: 2 of 5 rows \(--limit\): 2 ok, 0 error; cost \$[0-9.]+; results in", done.stderr
    )
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    assert manifest["options"] == {
        "limit": 2,
        "fresh": True,
        "retry_errors": False,
        "rerun_changed": False,
    }
    assert (manifest["input_rows"], manifest["input_rows_total"]) == (2, 5)
    assert manifest["limited"] is True
    done = batchrun(job, "--limit", "9", "--retry-errors")
    assert done.returncode == 0, done.stderr
    assert "complete: 5 ok, 0 error" in done.stderr.splitlines()[-1]
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    assert manifest["options"] == {
        "limit": 9,
        "fresh": False,
        "retry_errors": True,
        "rerun_changed": False,
    }
    assert (manifest["input_rows"], manifest["input_rows_total"]) == (5, 5)
    assert manifest["limited"] is False
