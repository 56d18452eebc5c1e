"""What a run prints on a terminal at each verbosity, seen through a real terminal (tmux).

A run with overloads on the simulator, in a tmux pane: by default the retries are counted on
the progress line and no per-retry line is printed; ``-v`` prints them; ``-q`` prints only the
closing summary. Off a terminal, see tests/test_cli.py.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import JobWriter, wait_until

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")

FAULTY = {
    "limits": {"concurrency": 4},
    "retry": {"max_attempts": 8},
    "sim": {
        "ttft_s": 0.01,
        "token_interval_s": 0.001,
        "faults": [{"kind": "overloaded", "rate": 0.25}],
    },
}
RETRIES = re.compile(r"retries (\d+) \(overloaded (\d+)\)")
Pane = Callable[..., str]


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Callable[..., Pane]]:
    """Run batchrun in a 200x50 tmux pane; returns a function that reads the pane (the whole
    scrollback, wrapped lines joined). The pane stays after the run: it ends in ``exit=N``."""
    socket = tmp_path / "tmux.sock"
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "TMUX")}

    def tmux(*args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", str(socket), *args],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout

    def start(*args: str | Path) -> Pane:
        argv = shlex.join([sys.executable, "-m", "batchrun.cli", *map(str, args)])
        # `cat` holds the pane open on its terminal once the run has printed its exit code.
        script = f"cd {shlex.quote(str(tmp_path))} && {argv}; echo exit=$?; exec cat"
        tmux("new-session", "-d", "-s", "run", "-x", "200", "-y", "50", "sh", "-c", script)

        def pane(*, history: bool = True) -> str:
            return tmux("capture-pane", "-p", "-J", "-t", "run", *(["-S", "-"] if history else []))

        return pane

    yield start
    subprocess.run(
        ["tmux", "-S", str(socket), "kill-server"], env=env, capture_output=True, check=False
    )


def finished(pane: Pane) -> str:
    wait_until(lambda: "exit=" in pane(), "the run's exit code in the tmux pane")
    return pane()


def test_by_default_retries_are_counted_on_the_progress_line_not_printed(
    write_job: JobWriter, tmp_path: Path, terminal: Callable[..., Pane]
) -> None:
    """Default verbosity on a terminal: a progress line with `retries N (overloaded M)`
    while the run goes on, the counts right at the end, and not one per-retry line."""
    pane = terminal(write_job(rows=150, extra=FAULTY))
    wait_until(lambda: RETRIES.search(pane(history=False)) is not None, "retries on the line")
    screen = finished(pane)
    assert "exit=0" in screen
    attempts = pl.read_parquet(tmp_path / "out" / "attempts.parquet")
    overloaded = attempts.filter(pl.col("outcome") == "overloaded_error").height
    counts = RETRIES.findall(screen)
    assert counts[-1] == (str(attempts.height - 150), str(overloaded))
    assert overloaded > 0
    assert "retry_scheduled" not in screen
    assert "batchrun.limits" not in screen  # the budget's reactions to single responses
    assert "batchrun.run.started" in screen
    assert " rpm " not in screen  # the simulator's advertised limits never bind here
    assert "batchrun: complete: 150 ok, 0 error" in screen


def test_verbose_prints_every_retry(write_job: JobWriter, terminal: Callable[..., Pane]) -> None:
    """-v on a terminal: one batchrun.request.retry_scheduled line per retry, as well."""
    pane = terminal("run", write_job(rows=60, extra=FAULTY), "-v")
    screen = finished(pane)
    assert "exit=0" in screen
    lines = [line for line in screen.splitlines() if "batchrun.request.retry_scheduled" in line]
    retries = int(RETRIES.findall(screen)[-1][0])
    assert len(lines) == retries > 0


def test_quiet_prints_only_the_summary(write_job: JobWriter, terminal: Callable[..., Pane]) -> None:
    """-q on a terminal: no progress line and no log line; the closing summary alone."""
    pane = terminal("-q", write_job(rows=60, extra=FAULTY))
    screen = finished(pane)
    lines = [line for line in screen.splitlines() if line.strip()]
    assert len(lines) == 2, screen
    assert re.match(r"batchrun: complete: 60 ok, 0 error; cost \$[0-9.]+; results in ", lines[0])
    assert lines[1] == "exit=0"


def test_log_format_json_on_a_terminal(write_job: JobWriter, terminal: Callable[..., Pane]) -> None:
    """--log-format json on a terminal: JSON lines as cron gets them (retries included), and
    no live line drawn among them."""
    pane = terminal(write_job(rows=60, extra=FAULTY), "--log-format", "json")
    screen = finished(pane)
    assert '"event": "batchrun.request.retry_scheduled"' in screen
    assert RETRIES.search(screen) is None
    assert "exit=0" in screen
