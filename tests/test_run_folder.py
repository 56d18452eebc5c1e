"""A run folder that cannot be used, as cron sees it: one paragraph on stderr, no traceback
(unless --debug), exit 2 when the job's own path is wrong and 74 when the folder is."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from batchrun.sim import SimServer
from tests.conftest import JobWriter

StartSim = Callable[..., SimServer]
ENV = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}


def batchrun(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchrun.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**ENV, "ANTHROPIC_API_KEY": "test-key"},
        check=False,
    )


def _one_paragraph(stderr: str) -> str:
    """The error paragraph: the only output, and no traceback."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_symlink_loop_as_output_dir_is_the_jobs_error(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """output.dir a symlink loop: exit 2 naming output.dir and the path; --debug shows the
    traceback."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    job = write_job(rows=2, extra={"output": {"dir": str(loop / "run")}})
    done = batchrun(job)
    assert done.returncode == 2
    line = _one_paragraph(done.stderr)
    assert "output.dir" in line
    assert str(loop) in line
    assert "Traceback" in batchrun(job, "--debug").stderr


@pytest.mark.parametrize(
    ("entry", "kind"),
    [("parts", "file"), ("run.json", "folder"), (".batchrun.lock", "folder")],
)
def test_an_entry_of_the_wrong_kind_is_refused_before_sending(
    write_job: JobWriter, sim_server: StartSim, tmp_path: Path, entry: str, kind: str
) -> None:
    """`parts` a file, `run.json` or the lock a folder: exit 74 with one paragraph naming
    the entry, before anything is sent; the entry is left as it was."""
    server = sim_server()
    run_dir = tmp_path / "out"
    run_dir.mkdir()
    if kind == "file":
        (run_dir / entry).write_text("not batchrun's\n")
    else:
        (run_dir / entry).mkdir()
    job = write_job(rows=2, extra={"endpoint": {"base_url": server.base_url}})
    done = batchrun(job)
    assert done.returncode == 74, done.stderr
    line = _one_paragraph(done.stderr)
    assert str(run_dir / entry) in line
    assert server.stats.total_requests == 0
    assert (run_dir / entry).is_dir() == (kind == "folder")
